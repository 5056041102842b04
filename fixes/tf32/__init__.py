"""TF32 for fp32 matmuls and convolutions (process-wide); the patch is in ``fix.py``."""
