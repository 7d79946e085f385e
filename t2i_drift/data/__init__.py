"""Datasets: built-in captioned sets, splits, batching."""

from t2i_drift.data.openmoji import OPENMOJI_ATTRIBUTION, OpenMojiDataset, openmoji_items
from t2i_drift.data.shapes import Scene, ShapesDataset, all_scenes, check_image, render_scene
from t2i_drift.data.splits import caption_hash, is_validation_caption

__all__ = [
    "OPENMOJI_ATTRIBUTION",
    "OpenMojiDataset",
    "Scene",
    "ShapesDataset",
    "all_scenes",
    "check_image",
    "render_scene",
    "caption_hash",
    "is_validation_caption",
    "openmoji_items",
]
