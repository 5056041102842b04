"""Worker processes for a single-process DataLoader; the patch is in ``fix.py``, the shared
DataLoader helpers in ``loader.py``."""
