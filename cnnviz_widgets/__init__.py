"""Open up PyTorch convolutional networks inside JupyterLab.

Everything public is re-exported here; see the README for the list.
"""

from . import demo
from .layers import conv_layers, map_layers
from . import render
from .heatmap_clusters import HeatmapClusters, heatmap_clusters
from .methods import (
    attention,
    cam,
    deletion_insertion,
    feature_maps,
    filter_patterns,
    filter_weights,
    grad_cam,
    gradients,
    guided_backprop,
    guided_grad_cam,
    occlusion,
    sanity_check,
    sanity_verdict,
)
from .data import Evaluation, embed, evaluate, project
from .comparison import ModelDiff, model_diff
from .diagnosis import Diagnosis, diagnose
from .layer_similarity import layer_similarity
from .scan import Scan, scan
from .projector import export_projector
from .widgets.charts import ClassProbabilities, ConfusionMatrix
from .widgets.scatter3d import Scatter3D
from .widgets.changes import ModelDiffPanel
from .widgets.compare import ComparePanel
from .widgets.dashboard import Dashboard, explore
from .widgets.diagnose import DiagnosePanel
from .widgets.feature_maps import FeatureMapPanel
from .widgets.filters import FiltersPanel
from .widgets.heatmaps import GradCAMPanel, GuidedBackpropPanel
from .widgets.mistakes import MistakesPanel
from .widgets.occlusion import OcclusionPanel
from .widgets.projector_panel import ProjectorPanel

__version__ = "0.1.0"
