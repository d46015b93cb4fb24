"""`selfsup bench`: several methods pretrained and evaluated under one budget and one protocol, in one table.

run.py runs the bench (and resumes it), report.py writes its table and bar chart, cli.py holds its flags.
"""
from .run import bench

__all__ = ["bench"]
