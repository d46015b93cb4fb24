"""Moved to selfsup/data/splits.py; these names stay importable from here for train/loop.py."""
from ..data.splits import class_balanced_subset, stratified_holdout

__all__ = ["class_balanced_subset", "stratified_holdout"]
