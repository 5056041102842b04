"""JSON-shaped data as block-style YAML text, without PyYAML.

Every YAML file stallscope writes (reports, ``meta.yaml``, verdicts, bench results) holds only
mappings, lists and scalars. Writing them here keeps PyYAML's ~12 ms import out of commands that
only write YAML (``diagnose -f yaml``), and writes the same layout PyYAML's safe dumper does:
keys in their order, two-space indents, lists under a key not indented, floats that read back as
floats (``1.0e-05``, ``.inf``, ``.nan``). A string is written plain only when YAML 1.1 cannot
read it as anything but that string, else single-quoted, else double-quoted with escapes (line
breaks, characters YAML may not hold raw, lone surrogates), so any text reads back unchanged. Long
strings are not folded. A repeated object is written out again (no anchors).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["to_yaml"]

# A plain scalar: printable ASCII without tabs that starts with a letter, digit, underscore, slash or
# dot (no YAML indicator); `: `, ` #` and a trailing colon or space are refused separately.
_PLAIN = re.compile(r"[A-Za-z0-9_/.][A-Za-z0-9_ .,:;/()<>\[\]{}+*=&@%!?'\"#|~^$`\\-]*")
# Text that starts like a number and could read as one, or as a date, in YAML 1.1 or 1.2 (ints in
# any base, floats, sexagesimals, .inf, .nan, timestamps): quoted, even where a reader would not
# take it for one ("0.1.0").
_NUMBERISH = re.compile(r"[0-9.][0-9a-fA-FxXoO._:+-]*|[0-9]{4}-.*|\.(?:inf|nan)", re.IGNORECASE)
# Words YAML 1.1 reads as booleans or null in some letter case.
_WORDS = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null"})
_MAX_KEY = 1000
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def to_yaml(data: Any) -> str:
    """``data`` (dicts, lists or tuples, str, int, float, bool, None) as block-style YAML text;
    raises TypeError on anything else, as a safe dumper would."""
    lines: list[str] = []
    if isinstance(data, Mapping) and data:
        _mapping(data, 0, lines)
    elif isinstance(data, (list, tuple)) and data:
        _sequence(data, 0, lines)
    else:
        lines.append(_scalar(data))
    return "\n".join(lines) + "\n"


def _mapping(data: Mapping[Any, Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for key, value in data.items():
        text = _scalar(key)
        explicit = len(text) > _MAX_KEY
        if explicit:  # YAML reads a key written the short way only up to 1,024 characters
            lines.append(pad + "? " + text)
            head = pad + ":"
        else:
            head = pad + text + ":"
        if isinstance(value, Mapping) and value:
            lines.append(head)
            _mapping(value, indent + 2, lines)
        elif isinstance(value, (list, tuple)) and value:
            lines.append(head)
            _sequence(value, indent + 2 if explicit else indent, lines)  # a list under a key is not indented
        else:
            lines.append(head + " " + _scalar(value))


def _sequence(data: list[Any] | tuple[Any, ...], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for item in data:
        if isinstance(item, Mapping) and item:
            first = len(lines)
            _mapping(item, indent + 2, lines)
            lines[first] = pad + "- " + lines[first][indent + 2 :]
        elif isinstance(item, (list, tuple)) and item:
            first = len(lines)
            _sequence(item, indent + 2, lines)
            lines[first] = pad + "- " + lines[first][indent + 2 :]
        else:
            lines.append(pad + "- " + _scalar(item))


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Mapping):
        return "{}"  # only empty ones reach here
    if isinstance(value, (list, tuple)):
        return "[]"
    raise TypeError(f"cannot write a {type(value).__name__} as YAML")


def _float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = float.__repr__(value).lower()
    if "." not in text and "e" in text:  # YAML 1.1 reads 1e-05 as text: 1.0e-05
        text = text.replace("e", ".0e", 1)
    return text


def _string(text: str) -> str:
    if (
        _PLAIN.fullmatch(text)
        and not _NUMBERISH.fullmatch(text)
        and text.lower() not in _WORDS
        and ": " not in text
        and " #" not in text
        and not text.endswith((":", " "))
    ):
        return text
    # Raw inside quotes: what Python calls printable, all of which YAML may hold raw; line breaks,
    # tabs, the byte order mark, other controls and format characters, private-use, unassigned
    # and surrogate code points get escapes.
    if text.isprintable():
        return "'" + text.replace("'", "''") + "'"
    return '"' + "".join(ch if ch.isprintable() and ch != '"' and ch != "\\" else _escape(ch) for ch in text) + '"'


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
