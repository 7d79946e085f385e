"""diffusers pipelines."""

from t2i_drift.pipelines.pipeline_drifting import DriftingPipeline

__all__ = ["DriftingPipeline"]
