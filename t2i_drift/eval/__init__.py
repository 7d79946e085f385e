"""Metrics and benchmark harness."""

from t2i_drift.eval.frechet import EffNetLite0Embedder, frechet_distance

__all__ = ["EffNetLite0Embedder", "frechet_distance"]
