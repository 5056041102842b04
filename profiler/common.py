"""Small pieces every stage shares: the version, the user-facing error, atomic files, safe YAML.

Kept free of torch and numpy imports so that `stallscope --help` and `diagnose` start fast.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from stallscope.profiler.yamltext import to_yaml

__all__ = [
    "__version__",
    "EXIT_INTERNAL",
    "EXIT_USAGE",
    "MAX_DEPTH",
    "check_outputs",
    "clean_str",
    "plain_text",
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
MAX_MESSAGE_CHARS = 600


class ToolError(Exception):
    """An error the user caused or can fix: shown as one line, no traceback, with an exit code.

    The message should say what went wrong, where, and what to do about it. It is kept to one
    line of at most ``MAX_MESSAGE_CHARS`` (values quoted from a hostile file can be any size).
    """

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        message = " ".join(str(message).splitlines())
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 203] + " ... " + message[-198:]
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into: a temporary file in the same folder,
    synced and renamed over ``path`` when the block ends, removed if it raises.

    A reader never sees a half-written file, and an existing file is replaced only once the new
    content is complete (its mode is kept).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_output`)."""
    with atomic_output(path) as fh:
        fh.write(data)
    return Path(path)


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
# hundred KiB at most and nest a handful of levels; a document that expands past a million nodes
# through aliases ("billion laughs": 309 bytes can stand for 10^9 strings), refers to itself, or
# nests deeper than any code that walks it recursively can follow is refused before anything
# walks it.
YAML_MAX_BYTES = 64 * 1024 * 1024
YAML_MAX_NODES = 1_000_000
MAX_DEPTH = 100


def _node_stats(root: Any) -> tuple[int, int, bool]:
    """(nodes once every alias is expanded, nesting depth, whether an alias refers to a node it is
    inside) of a composed YAML node graph, computed without expanding: memoised per node, walked
    without recursion. Stops early once the node count passes ``YAML_MAX_NODES``."""
    import yaml

    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()
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
            sizes[id(node)] = (1, 0)
            continue
        if children_done:
            open_nodes.discard(id(node))
            n = 1 + sum(sizes[id(k)][0] for k in kids)
            sizes[id(node)] = (n, 1 + max((sizes[id(k)][1] for k in kids), default=0))
            if n > YAML_MAX_NODES:
                return n, sizes[id(node)][1], False
            continue
        if any(id(k) in open_nodes or k is node for k in kids):
            return 0, 0, True
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    n, depth = sizes.get(id(root), (0, 0))
    return n, depth, False


def _plain_loader() -> Any:
    """The safe loader, with timestamps, ``!!binary`` and ``!!set`` read as the plain text and
    mapping they are written as: what we read is JSON-shaped data, never dates, bytes or sets."""
    import yaml

    class PlainLoader(yaml.SafeLoader):
        pass

    def construct_int(loader: PlainLoader, node: Any) -> int:
        value = loader.construct_yaml_int(node)
        if abs(value) >= 2**64:  # no count, id or time we write is this large; floats could not hold it
            raise yaml.constructor.ConstructorError(None, None, "an integer past 64 bits", node.start_mark)
        return value

    def construct_text(loader: PlainLoader, node: Any) -> Any:
        return loader.construct_scalar(node)

    def construct_set(loader: PlainLoader, node: Any) -> Any:
        return loader.construct_mapping(node)

    for tag in ("timestamp", "binary"):
        PlainLoader.add_constructor(f"tag:yaml.org,2002:{tag}", construct_text)
    PlainLoader.add_constructor("tag:yaml.org,2002:set", construct_set)
    PlainLoader.add_constructor("tag:yaml.org,2002:int", construct_int)
    return PlainLoader


def plain_text(doc: Any, where: str = "the document") -> Any:
    """``doc`` (parsed JSON or YAML) with every string, key included, made encodable: lone
    surrogates (from ``\\ud800`` escapes) become U+FFFD, escaped pairs one character. Walked
    without recursion; a ToolError when it nests deeper than ``MAX_DEPTH``."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ToolError(f"{where}: nested more than {MAX_DEPTH} levels deep; not a file stallscope reads")
        if isinstance(node, dict):
            for key in list(node):
                value = node[key]
                if isinstance(value, str):
                    value = clean_str(value)
                if isinstance(key, str) and clean_str(key) is not key:
                    del node[key]
                    key = clean_str(key)
                node[key] = value
                if isinstance(value, (dict, list)):
                    stack.append((value, depth + 1))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                if isinstance(value, str):
                    node[i] = clean_str(value)
                elif isinstance(value, (dict, list)):
                    stack.append((value, depth + 1))
    return clean_str(doc) if isinstance(doc, str) else doc


def clean_str(text: str) -> str:
    """``text`` itself when it encodes as UTF-8, else with its surrogates paired up or replaced."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file with the safe loader, bounded in size, in alias expansion and in depth;
    undecodable bytes and lone surrogates become U+FFFD. Unreadable, invalid or oversized YAML
    becomes a ToolError."""
    import yaml

    p = Path(path)
    try:
        if p.stat().st_size > YAML_MAX_BYTES:
            raise ToolError(f"{p}: {p.stat().st_size} bytes, more than a stallscope YAML file can be; check the path")
        with p.open("r", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        loader = _plain_loader()(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            nodes, depth, cyclic = _node_stats(root)
            if cyclic:
                raise ToolError(
                    f"{p}: an alias refers to a node it is part of; not a file stallscope wrote: regenerate it"
                )
            if nodes > YAML_MAX_NODES:
                raise ToolError(
                    f"{p}: its aliases expand to more than {YAML_MAX_NODES:,} nodes; "
                    "not a file stallscope wrote: regenerate it"
                )
            if depth > MAX_DEPTH:
                raise ToolError(f"{p}: nested more than {MAX_DEPTH} levels deep; not a file stallscope wrote")
            return plain_text(loader.construct_document(root), str(p))
        finally:
            loader.dispose()
    except FileNotFoundError:
        raise ToolError(f"{p}: no such file; check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        what = f"not valid YAML ({problem})" if problem else "not valid YAML"
        raise ToolError(f"{p}{where}: {what}; fix or regenerate the file") from None
    except RecursionError:
        raise ToolError(f"{p}: nested too deeply to read; not a file stallscope wrote") from None
    except OSError as exc:
        raise ToolError(f"{p}: cannot read ({exc.__class__.__name__}); check the file") from None


def dump_yaml(data: Any) -> str:
    """``data`` as block-style YAML text, keys in their order (:func:`profiler.yamltext.to_yaml`:
    the layout of PyYAML's safe dumper without importing PyYAML)."""
    return to_yaml(data)


def write_yaml(path: str | os.PathLike[str], data: Any) -> Path:
    """Write `data` as block-style YAML, atomically, keeping key order."""
    return atomic_write_text(path, dump_yaml(data))


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
