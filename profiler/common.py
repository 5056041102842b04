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
    "check_outputs",
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


# Bounds for YAML we read (meta.yaml, rank.yaml, reports, gate.yaml). Our own files are a few
# hundred KiB at most; a document that expands past a million nodes through aliases ("billion
# laughs": 309 bytes can stand for 10^9 strings) is refused before anything walks it.
YAML_MAX_BYTES = 64 * 1024 * 1024
YAML_MAX_NODES = 1_000_000


def _expanded_nodes(root: Any) -> int:
    """How many nodes the document has once every alias is expanded (shared nodes counted once
    per reference), computed without expanding: memoised on the composed node graph."""
    import yaml

    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        else:
            sizes[id(node)] = 1
            continue
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(k)] for k in kids)
            if sizes[id(node)] > YAML_MAX_NODES:
                return sizes[id(node)]
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes.get(id(root), 0)


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file with the safe loader, bounded in size and in alias expansion; unreadable,
    invalid or oversized YAML becomes a ToolError."""
    import yaml

    p = Path(path)
    try:
        if p.stat().st_size > YAML_MAX_BYTES:
            raise ToolError(f"{p}: {p.stat().st_size} bytes, more than a stallscope YAML file can be; check the path")
        with p.open("r", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            if _expanded_nodes(root) > YAML_MAX_NODES:
                raise ToolError(
                    f"{p}: its aliases expand to more than {YAML_MAX_NODES:,} nodes; "
                    "not a file stallscope wrote: regenerate it"
                )
            return loader.construct_document(root)
        finally:
            loader.dispose()
    except FileNotFoundError:
        raise ToolError(f"{p}: no such file; check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ToolError(f"{p}{where}: not valid YAML; fix or regenerate the file") from None
    except (OSError, RecursionError) as exc:
        raise ToolError(f"{p}: cannot read ({exc.__class__.__name__}); check the file") from None


def write_yaml(path: str | os.PathLike[str], data: Any) -> Path:
    """Write `data` as block-style YAML, atomically, keeping key order."""
    import yaml

    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return atomic_write_text(path, text)


def check_outputs(outputs: dict[str, Any], inputs: tuple[Any, ...] = ()) -> None:
    """Refuse, before any work, an output path (``{option: path or None}``) that is a folder or
    the same file as an input: a report must never overwrite the trace or baseline it was made from."""
    seen = [Path(i).resolve() for i in inputs if i is not None]
    for option, path in outputs.items():
        if path is None:
            continue
        out = Path(path)
        if out.is_dir():
            raise ToolError(f"{option} {out}: is a folder; give a file name inside it (e.g. {out / 'out.yaml'})")
        if out.resolve() in seen:
            raise ToolError(f"{option} {out}: is one of the inputs and would be overwritten; write to another file")
