"""diffusers pipelines: one-step drifting and the flow-matching baseline."""

from __future__ import annotations

import json
from pathlib import Path

from t2i_drift.pipelines.pipeline_drifting import DriftingPipeline
from t2i_drift.pipelines.pipeline_flow_matching import FlowMatchingPipeline
from t2i_drift.pipelines.text_to_image import TextToImagePipeline

PIPELINE_CLASSES: dict[str, type[TextToImagePipeline]] = {
    cls.__name__: cls for cls in (DriftingPipeline, FlowMatchingPipeline)
}


def load_pipeline(path: str | Path, **kwargs) -> TextToImagePipeline:
    """Load an exported t2i_drift pipeline folder (standard or hub layout) as the class its
    ``model_index.json`` names; ``kwargs`` go to ``from_pretrained`` (e.g. ``torch_dtype``)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{str(path)!r} is not a pipeline folder (no model_index.json)")
    name = json.loads(index.read_text()).get("_class_name")
    name = name[-1] if isinstance(name, list) else name  # the hub layout names [module, class]
    if name not in PIPELINE_CLASSES:
        raise ValueError(f"{index}: _class_name {name!r} is not one of {sorted(PIPELINE_CLASSES)}")
    return PIPELINE_CLASSES[name].from_pretrained(path, **kwargs)


__all__ = [
    "PIPELINE_CLASSES",
    "DriftingPipeline",
    "FlowMatchingPipeline",
    "TextToImagePipeline",
    "load_pipeline",
]
