"""Metrics and benchmark harness.

frechet.py     FD-EffNetLite0 (a Frechet distance in EfficientNet-Lite0 features; not FID)
retrieval.py   paired retrieval accuracy (prompt adherence without a text-image model)
shapes.py      per-attribute checker accuracy on the shapes set
diversity.py   per-prompt diversity (pixel RMS and EfficientNet-Lite0 feature distance)
generation.py  loading a pipeline for evaluation, sampling steps, timed generation
suites.py      the OpenMoji and shapes evaluation suites (scripts/evaluate.py)
comparison.py  objectives at equal steps: run folders, report table and plot
               (scripts/compare_objectives.py)
plot.py        a PIL line plot
cli.py         the evaluation scripts' shared options
toy2d.py       the 2-D toy experiments
"""

from t2i_drift.eval.diversity import diversity, feature_diversity, pixel_rms_diversity
from t2i_drift.eval.frechet import EffNetLite0Embedder, frechet_distance
from t2i_drift.eval.generation import Generated, generate_images, load_for_eval
from t2i_drift.eval.retrieval import paired_retrieval_accuracy
from t2i_drift.eval.shapes import attribute_accuracy
from t2i_drift.eval.suites import EvalSettings, evaluate_pipeline, make_suite

__all__ = [
    "EffNetLite0Embedder",
    "EvalSettings",
    "Generated",
    "attribute_accuracy",
    "diversity",
    "evaluate_pipeline",
    "feature_diversity",
    "frechet_distance",
    "generate_images",
    "load_for_eval",
    "make_suite",
    "paired_retrieval_accuracy",
    "pixel_rms_diversity",
]
