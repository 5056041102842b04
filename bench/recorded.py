"""Commands and paths as the bench scripts record them in ``bench/results``: no machine paths.

A results file says how to make it again on another machine, so what it records must not name
this one's folders. Each absolute path is rewritten by the first rule that fits:

* a Python interpreter (``sys.executable``, or any ``.../bin/python3.11``) -> ``python3``;
* inside a ``site-packages`` (or ``dist-packages``) folder -> ``$SITE_PACKAGES/<rest>``;
* inside this repository -> relative to its root (``bench/x.py``; the root itself ``.``);
* inside the run's output folder ``out`` -> ``$OUT/<rest>``;
* inside a temporary folder (``$TMPDIR``, ``/tmp``, ``/var/tmp``, ``/dev/shm``) -> ``$TMP/<rest>``;
* inside the home folder -> ``~/<rest>``.

Any other absolute path is left as it is (:func:`machine_paths` finds such leftovers). The
repository rule comes before ``out`` so that results written into the checkout keep their real
place (``bench/results/...``); the interpreter and site-packages rules come first because a
virtual environment may live inside the repository or a temporary folder.

    recorded_command([sys.executable, __file__, *sys.argv[1:]], out)
    # -> "python3 bench/scenarios/run.py --keep-runs $OUT/runs"
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# An absolute path inside free text: starts with one "/" not glued to a word, a relative path,
# a "$VAR" or a URL's "//", and runs up to whitespace, a quote or a separator ("=", ":", ",",
# ";", brackets), so "--junit=/tmp/x.xml", "file /tmp/x.py:12:" and "[/tmp/a, /tmp/b]" split right.
_PATH_IN_TEXT = re.compile(r"(?<![\w.~$/\\-])/(?!/)[^\s'\"`,;:=()\[\]{}<>|*?]+")
_INTERPRETER = re.compile(r"python[0-9.]*")
# Arguments that need no quoting in a shell line; "$" is kept bare so "$OUT/x" still expands.
_SHELL_SAFE = re.compile(r"[\w@%+=:,./$~-]+")
_TEMP_ROOTS = ("/tmp", "/var/tmp", "/dev/shm")
_SITE_DIRS = {"site-packages", "dist-packages"}


def _forms(path: str) -> set[str]:
    """The path as written (normalised) and with its links resolved: either may match a root."""
    return {os.path.normpath(path), os.path.realpath(path)}


def _inside(path: str, root: str | os.PathLike[str] | None) -> str | None:
    """``path`` relative to ``root`` ("" for the root itself), or None when it is outside."""
    if root is None or not os.fspath(root):
        return None
    for p in _forms(path):
        for r in _forms(str(Path(root).absolute())):
            if r == os.sep:
                continue
            if p == r:
                return ""
            if p.startswith(r + os.sep):
                return p[len(r) + 1 :]
    return None


def _temp_roots() -> list[str]:
    return list(dict.fromkeys([tempfile.gettempdir(), *_TEMP_ROOTS]))


def recorded_path(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> str:
    """One path as a results file records it (the rules in the module docstring).

    ``out`` is the folder the run writes its results to; a relative ``path`` is returned as it
    is, except one that names ``out`` as given (``bench-out/runs`` with ``out="bench-out"``).
    """
    text = os.fspath(path)
    if not os.path.isabs(text):
        if out is not None and not os.path.isabs(os.fspath(out)):
            given = os.path.normpath(os.fspath(out))
            norm = os.path.normpath(text)
            if norm == given:
                return "$OUT"
            if norm.startswith(given + os.sep):
                return "$OUT/" + norm[len(given) + 1 :]
        return text
    if _forms(text) & _forms(sys.executable) or (
        _INTERPRETER.fullmatch(os.path.basename(text)) and os.path.basename(os.path.dirname(text)) == "bin"
    ):
        return "python3"
    parts = Path(os.path.normpath(text)).parts
    for i, part in enumerate(parts):
        if part in _SITE_DIRS:
            return "/".join(("$SITE_PACKAGES", *parts[i + 1 :]))
    rel = _inside(text, ROOT)
    if rel is not None:
        return rel or "."
    for root, name in [(out, "$OUT"), *((t, "$TMP") for t in _temp_roots()), (Path.home(), "~")]:
        rel = _inside(text, root)
        if rel is not None:
            return f"{name}/{rel}" if rel else name
    return text


def recorded_text(text: str, out: str | os.PathLike[str] | None = None) -> str:
    """Free text (an output tail, an error, an argument holding a whole command) with every
    absolute path in it rewritten by :func:`recorded_path`."""
    return _PATH_IN_TEXT.sub(lambda m: _rewrite_match(m.group(0), out), text)


def _rewrite_match(found: str, out: str | os.PathLike[str] | None) -> str:
    body = found.rstrip(".")  # a sentence's full stop after a path is not part of it
    return recorded_path(body, out) + found[len(body) :]


def recorded_argv(argv: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None) -> list[str]:
    """Each argument of a command line rewritten: a path, ``--opt=PATH``, or text holding paths
    (``--base-cmd "/venv/bin/python3 bench/w.py"``)."""
    shown = []
    for arg in argv:
        text = os.fspath(arg)
        key, eq, value = text.partition("=")
        if eq and key.startswith("-") and not os.path.isabs(value):
            shown.append(key + eq + recorded_path(value, out))  # --out=bench-out/x: a relative out
        elif not os.path.isabs(text) and recorded_path(text, out) != text:
            shown.append(recorded_path(text, out))
        else:
            shown.append(recorded_text(text, out))
    return shown


def _quote(arg: str) -> str:
    if _SHELL_SAFE.fullmatch(arg):
        return arg
    if "$" in arg:  # double quotes keep "$OUT" expanding
        return '"' + re.sub(r'(["\\`])', r"\\\1", arg) + '"'
    return shlex.quote(arg)


def recorded_command(argv: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None) -> str:
    """A command line as one shell line for a results file: the interpreter as ``python3``, the
    script relative to the repository, the output folder as ``$OUT``, temporary folders as
    ``$TMP`` (see the module docstring), arguments quoted only where a shell needs it.

    Typical use: ``recorded_command([sys.executable, __file__, *sys.argv[1:]], out)``.
    """
    return " ".join(_quote(a) for a in recorded_argv(argv, out))


def machine_paths(text: str) -> list[str]:
    """The absolute paths left in ``text`` (a results file's content): what a check of a
    results file expects to find none of."""
    return [m.group(0).rstrip(".") for m in _PATH_IN_TEXT.finditer(text)]


def gpu_driver() -> str | None:
    """The NVIDIA driver's version as ``nvidia-smi`` reports it (first GPU); None without one.
    Every GPU result records it beside the GPU and torch."""
    import subprocess  # noqa: PLC0415 - only the GPU scripts ask

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return lines[0].strip() if lines else None
