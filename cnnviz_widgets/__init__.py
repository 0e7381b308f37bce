"""Open up PyTorch convolutional networks inside JupyterLab.

Everything public is re-exported here; see the README for the list.
"""

from . import demo
from .layers import conv_layers

__version__ = "0.1.0"
