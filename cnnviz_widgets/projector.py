"""Export embeddings for TensorBoard's Embedding Projector, so a user can move between the two tools.

``tensorboard --logdir FOLDER`` (Projector tab) or projector.tensorflow.org ("Load" the TSV files) read:

- ``tensors.tsv``: one point per line, its values separated by tabs;
- ``metadata.tsv``: one line per point; a single column has no header, several columns have a header line;
- ``sprite.png``: every image as a thumbnail in a grid, row-major, at most 8192 pixels a side;
- ``projector_config.pbtxt``: the text-format ProjectorConfig tying the files together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from .sprites import build_atlas

TENSORS_FILE = "tensors.tsv"
METADATA_FILE = "metadata.tsv"
SPRITE_FILE = "sprite.png"
CONFIG_FILE = "projector_config.pbtxt"
# The projector refuses sprites larger than this on either side.
SPRITE_MAX_SIDE = 8192
SPRITE_THUMBNAIL_SIZE = 64


def _metadata_cell(value) -> str:
    # A tab or newline inside a value would shift every following column or row.
    return " ".join(str(value).split())


def _check_labels(labels, count: int, class_names) -> list[list[str]]:
    """-> columns of metadata: the label, and its class name when class names are given."""
    values = labels.detach().cpu().tolist() if isinstance(labels, Tensor) else list(np.asarray(labels).tolist())
    if len(values) != count:
        raise ValueError(f"labels: {len(values)} labels for {count} embeddings; give one label per point")
    columns = [[_metadata_cell(value) for value in values]]
    if class_names is not None:
        names = list(class_names)
        try:
            columns.append([_metadata_cell(names[int(value)]) for value in values])
        except (IndexError, TypeError, ValueError) as error:
            raise ValueError(
                f"class_names: labels must be class indices into the {len(names)} class names given"
            ) from error
    return columns


def export_projector(folder, embeddings, labels=None, images=None, class_names=None) -> Path:
    """Write ``embeddings`` (N, D), and optionally per-point ``labels`` and ``images``, as TensorBoard
    Embedding Projector files in ``folder`` (created if needed); returns the folder's path.

    labels: N class indices (or strings); with ``class_names`` the metadata gets a second column, the name.
    images: N images (tensor (N, C, H, W), array, or list of PIL images) for the sprite atlas.
    """
    if isinstance(embeddings, Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    points = np.asarray(embeddings, dtype=np.float32)
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"embeddings: expected a non-empty 2-D array (N, D), got shape {points.shape}")
    if class_names is not None and labels is None:
        raise ValueError("class_names: given without labels; pass labels= too")
    # Everything is checked before the first file is written, so a bad argument leaves no half export.
    columns = None if labels is None else _check_labels(labels, len(points), class_names)
    atlas = None
    if images is not None:
        atlas = build_atlas(images, thumbnail_size=SPRITE_THUMBNAIL_SIZE, max_side=SPRITE_MAX_SIDE)
        if atlas.count != len(points):
            raise ValueError(f"images: {atlas.count} images for {len(points)} embeddings; give one image per point")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / TENSORS_FILE, points, delimiter="\t", fmt="%.7g")
    config = [
        "embeddings {",
        '  tensor_name: "embeddings"',
        f'  tensor_path: "{TENSORS_FILE}"',
        f"  tensor_shape: {points.shape[0]}",
        f"  tensor_shape: {points.shape[1]}",
    ]
    if columns is not None:
        rows = ["\t".join(cells) for cells in zip(*columns)]
        if len(columns) > 1:
            rows.insert(0, "label\tclass")
        (folder / METADATA_FILE).write_text("\n".join(rows) + "\n", encoding="utf-8")
        config.append(f'  metadata_path: "{METADATA_FILE}"')
    if atlas is not None:
        atlas.image.save(folder / SPRITE_FILE)
        config += [
            "  sprite {",
            f'    image_path: "{SPRITE_FILE}"',
            f"    single_image_dim: {atlas.thumbnail_size}",
            f"    single_image_dim: {atlas.thumbnail_size}",
            "  }",
        ]
    config.append("}")
    (folder / CONFIG_FILE).write_text("\n".join(config) + "\n", encoding="utf-8")
    return folder
