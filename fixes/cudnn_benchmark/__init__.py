"""cuDNN autotuning of convolution algorithms (process-wide); the patch is in ``fix.py``."""
