"""t2i_drift: one-step text-to-image generators trained with the drifting objective.

Importing the package registers the diffusers components eagerly: diffusers 0.42 resolves a
third-party component saved as ``t2i_drift.models.transformer_drifting`` only through
``sys.modules`` when a pipeline folder is loaded. The MAE feature encoder (``ResNetMAE``) is
registered the same way, so a folder that names it as a component resolves too, and so is the
flow-matching baseline's pipeline, and the OpenCLIP text tower (``OpenCLIPTextModel``; importing
it does not import open_clip).
"""

from t2i_drift.models.mae_resnet import ResNetMAE
from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
from t2i_drift.pipelines.loading import load_pipeline
from t2i_drift.pipelines.pipeline_drifting import DriftingPipeline
from t2i_drift.pipelines.pipeline_flow_matching import FlowMatchingPipeline
from t2i_drift.text.open_clip_text import OpenCLIPTextModel

__version__ = "0.1.0"
__all__ = [
    "DriftingPipeline",
    "DriftingTransformer2DModel",
    "FlowMatchingPipeline",
    "OpenCLIPTextModel",
    "ResNetMAE",
    "__version__",
    "load_pipeline",
]
