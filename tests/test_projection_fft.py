"""2-D t-SNE from 10,000 points: openTSNE's FFT-interpolated gradient, and a map that keeps each point's neighbours.

The gradient openTSNE runs is observed by wrapping its two gradient functions, which it looks up at each fit.
"""

from __future__ import annotations

import numpy as np
import openTSNE.tsne
import pytest
from sklearn.neighbors import NearestNeighbors

import cnnviz_widgets as cw

POINTS = 10_000
CLUSTERS = 10
DIMENSIONS = 20
NEIGHBOURS = 10
# Measured on this data: t-SNE keeps 0.26 of each point's 10 nearest neighbours, a 2-D PCA 0.03, chance 0.001.
KEPT_NEIGHBOURS_BOUND = 0.15


def nearest(points: np.ndarray) -> np.ndarray:
    """Each point's NEIGHBOURS nearest other points, as indices (N, NEIGHBOURS)."""
    return NearestNeighbors(n_neighbors=NEIGHBOURS + 1).fit(points).kneighbors(points, return_distance=False)[:, 1:]


def counting(function, calls: dict, name: str):
    def counted(*args, **kwargs):
        calls[name] += 1
        return function(*args, **kwargs)

    return counted


@pytest.mark.slow
def test_ten_thousand_points_in_2d_take_the_fft_gradient_and_keep_neighbours(monkeypatch):
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6.0, size=(CLUSTERS, DIMENSIONS))
    clusters = rng.integers(CLUSTERS, size=POINTS)
    embeddings = (centres[clusters] + rng.normal(size=(POINTS, DIMENSIONS))).astype(np.float32)
    calls = {"fft": 0, "bh": 0}
    monkeypatch.setattr(openTSNE.tsne, "kl_divergence_fft", counting(openTSNE.tsne.kl_divergence_fft, calls, "fft"))
    monkeypatch.setattr(openTSNE.tsne, "kl_divergence_bh", counting(openTSNE.tsne.kl_divergence_bh, calls, "bh"))

    points = cw.project(embeddings, "tsne", dims=2, seed=0)

    assert points.shape == (POINTS, 2) and points.dtype == np.float32
    assert calls["fft"] > 0 and calls["bh"] == 0, f"gradient evaluations: {calls}"
    before, after = nearest(embeddings), nearest(points)
    kept = np.mean([len(np.intersect1d(a, b)) for a, b in zip(before, after)]) / NEIGHBOURS
    assert kept > KEPT_NEIGHBOURS_BOUND
    assert (clusters[after] == clusters[:, None]).mean() > 0.99, "each point's map neighbours share its cluster"
