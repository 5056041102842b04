"""Page-locked host buffers for DataLoader batches; the patch is in ``fix.py``."""
