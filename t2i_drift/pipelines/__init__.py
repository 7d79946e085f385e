"""diffusers pipelines: one-step drifting and the flow-matching baseline."""

from __future__ import annotations

from t2i_drift.pipelines.loading import load_pipeline
from t2i_drift.pipelines.pipeline_drifting import DriftingPipeline
from t2i_drift.pipelines.pipeline_flow_matching import FlowMatchingPipeline
from t2i_drift.pipelines.text_to_image import TextToImagePipeline

PIPELINE_CLASSES: dict[str, type[TextToImagePipeline]] = {
    cls.__name__: cls for cls in (DriftingPipeline, FlowMatchingPipeline)
}

__all__ = [
    "PIPELINE_CLASSES",
    "DriftingPipeline",
    "FlowMatchingPipeline",
    "TextToImagePipeline",
    "load_pipeline",
]
