"""Small pieces every stage shares: the version, the user-facing error, atomic files, safe YAML.

Kept free of torch and numpy imports so that `stallscope --help` and `diagnose` start fast.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "__version__",
    "EXIT_INTERNAL",
    "EXIT_USAGE",
    "ToolError",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_yaml",
    "write_yaml",
]

__version__ = "0.1.0"

EXIT_USAGE = 2
# An unexpected exception inside stallscope: a bug to report (BSD sysexits' EX_SOFTWARE).
EXIT_INTERNAL = 70


class ToolError(Exception):
    """An error the user caused or can fix: shown as one line, no traceback, with an exit code.

    The message should say what went wrong, where, and what to do about it.
    """

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, then rename.

    A reader never sees a half-written file, and an existing file is replaced only once the
    new content is complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _default_mode(target))
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def _default_mode(target: Path) -> int:
    """Keep an existing file's mode; new files get what open() would give (0o666 & ~umask),
    not mkstemp's private 0o600."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Text variant of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file with the safe loader; unreadable or invalid YAML becomes a ToolError."""
    import yaml

    p = Path(path)
    try:
        with p.open("r", encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise ToolError(f"{p}: no such file; check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ToolError(f"{p}{where}: not valid YAML; fix or regenerate the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"{p}: cannot read ({exc.__class__.__name__}); check permissions") from None


def write_yaml(path: str | os.PathLike[str], data: Any) -> Path:
    """Write `data` as block-style YAML, atomically, keeping key order."""
    import yaml

    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return atomic_write_text(path, text)
