"""Built-in analyzers, one per file; each registers itself with ``analyzers.base.register``."""
