"""Diagnosis: read a run directory or torch.profiler traces, produce findings and the report.

Nothing in this package imports torch.
"""
