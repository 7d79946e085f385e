"""t2i_drift: one-step text-to-image generators trained with the drifting objective.

Importing the package registers the diffusers components eagerly: diffusers 0.42 resolves a
third-party component saved as ``t2i_drift.models.transformer_drifting`` only through
``sys.modules`` when a pipeline folder is loaded. The MAE feature encoder (``ResNetMAE``) is
registered the same way, so a folder that names it as a component resolves too, and so is the
flow-matching baseline's pipeline.
"""

from t2i_drift.models.mae_resnet import ResNetMAE
from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
from t2i_drift.pipelines.pipeline_drifting import DriftingPipeline
from t2i_drift.pipelines.pipeline_flow_matching import FlowMatchingPipeline

__version__ = "0.1.0"
__all__ = [
    "DriftingPipeline",
    "DriftingTransformer2DModel",
    "FlowMatchingPipeline",
    "ResNetMAE",
    "__version__",
]
