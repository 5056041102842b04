"""Optimized implementations and the patches that swap them in, one folder per fix."""
