"""Honest evaluation of frozen and fine-tuned encoders: kNN, linear probe, fine-tuning, baselines, reports."""
from ..data.splits import class_balanced_subset
from .features import extract_features
from .finetune import finetune
from .knn import knn_accuracy, knn_predict
from .linear import linear_probe
from .report import evaluate_encoder, format_markdown

__all__ = [
    "extract_features",
    "knn_predict",
    "knn_accuracy",
    "linear_probe",
    "finetune",
    "class_balanced_subset",
    "evaluate_encoder",
    "format_markdown",
]
