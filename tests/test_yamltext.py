"""The YAML writer without PyYAML: whatever it writes, PyYAML's safe loader (and stallscope's own
bounded reader) reads back as the same data, in the block layout PyYAML's dumper uses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from stallscope.profiler.common import read_yaml, write_yaml
from stallscope.profiler.yamltext import to_yaml

# Text YAML 1.1 would read as something else, or can only hold quoted or escaped.
TRICKY = [
    "", " ", " lead", "trail ", "yes", "No", "OFF", "y", "n", "null", "Null", "~", "true", "=", "<<",
    "0.1.0", "1e5", "1_000", "0x1F", "0o17", "0b101", "012", "12:30:05", "2026-12-04", "2026-12-04 10:00:00",
    ".inf", "-.inf", ".NaN", "+1", "-1", "1.", ".5", "a: b", "a #b", "a#b", "key:", "-x", "- x", "?x", "? x",
    "*alias", "&anchor", "!tag", "%dir", "@x", "`x", "|", ">", "[a]", "{a: 1}", "'q'", '"q"', "\\", "a\\nb",
    "line\nbreak", "cr\rlf", "tab\there", "nul\x00", "\x7f", "\x85nel", "\u2028", "\u2029", "\ufeffbom",
    "\ud800 lone surrogate", "emoji \U0001f600", "é accent", "---", "...", "a,b", "at::native::k<float, 4>(int)",
    "/tmp/x/trace.json.gz", "ProfilerStep#3",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_read_back_as_values_and_as_keys(text: str) -> None:
    doc = {"value": text, text: [text, {text: text}], "list": [[text]]}
    assert yaml.safe_load(to_yaml(doc)) == doc


def test_layout_is_pyyaml_block_style() -> None:
    doc = {"a": {"b": [1, 2.5, 1e-05, None, True], "c": []}, "d": [{"e": 1, "f": {}}, [3, 4]], "g": "x"}
    assert to_yaml(doc) == (
        "a:\n  b:\n  - 1\n  - 2.5\n  - 1.0e-05\n  - null\n  - true\n  c: []\n"
        "d:\n- e: 1\n  f: {}\n- - 3\n  - 4\ng: x\n"
    )
    assert yaml.safe_dump(doc, sort_keys=False) == to_yaml(doc)  # PyYAML writes the same text


def test_floats_keep_their_type_and_value() -> None:
    values = [0.0, -0.0, 1e-05, 1e16, 123456789.125, 5e-324, 1.7976931348623157e308, -2.5e-10]
    back = yaml.safe_load(to_yaml({"v": values, "inf": math.inf, "ninf": -math.inf, "nan": math.nan}))
    assert back["v"] == values and all(type(v) is float for v in back["v"])
    assert back["inf"] == math.inf and back["ninf"] == -math.inf and math.isnan(back["nan"])


def test_long_keys_read_back() -> None:
    doc = {"k" * 1500: {"x": 1}, "q: " * 400: [1, 2], "plain": 1}  # past YAML's 1,024-character simple key
    assert yaml.safe_load(to_yaml(doc)) == doc


def test_other_types_are_refused() -> None:
    with pytest.raises(TypeError):
        to_yaml({"a": object()})
    with pytest.raises(TypeError):
        to_yaml({"a": {1, 2}})


def test_written_files_read_back_through_the_bounded_reader(tmp_path: Path) -> None:
    doc = {"note": "line\nbreak \ud800", "when": "2026-12-04", "n": 2**63 - 1, "x": [{"a": None}]}
    path = write_yaml(tmp_path / "d.yaml", doc)
    back = read_yaml(path)
    assert back["when"] == "2026-12-04" and back["n"] == 2**63 - 1 and back["x"] == [{"a": None}]
    assert back["note"].startswith("line\nbreak ")  # the lone surrogate reads back replaced, not fatal


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(TRICKY)
)
keys = st.text(max_size=20) | st.sampled_from(TRICKY) | st.integers(min_value=-1000, max_value=1000)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(documents)
def test_any_document_reads_back_unchanged(doc: object) -> None:
    assert yaml.safe_load(to_yaml(doc)) == doc
