"""Metrics and benchmark harness."""

from t2i_drift.eval.frechet import EffNetLite0Embedder, frechet_distance
from t2i_drift.eval.retrieval import paired_retrieval_accuracy

__all__ = ["EffNetLite0Embedder", "frechet_distance", "paired_retrieval_accuracy"]
