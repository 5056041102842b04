"""Capture: run the target, record telemetry and a windowed Kineto trace, write a run directory.

Importing this package is cheap (no torch); the profiling API is imported on first use.
"""
from profiler.common import __version__

__all__ = ["__version__"]
