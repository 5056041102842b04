"""Environment fingerprint: is the current report measured on the same kind of machine?

A step-time comparison across a different GPU model, driver, torch or CUDA build, or a GPU
whose configured clocks or power limit differ (a clock lock, a power cap, another SKU)
says more about the machine than about the code. The gate compares these fields from the
reports' ``environment`` section and calls the verdict inconclusive on a mismatch unless
``--allow-env-change`` is given.

Clocks: the configured clocks (maximum and application SM/memory clocks) and the power
limit are compared within 5 %: a clock lock or a lower power cap changes step time for every
kernel. The clocks read at rest (the first NVML sample of a run) are shown, and a difference
is a note, not a mismatch: right after another run (paired mode, A B A B) the GPU is still
boosted, and an idle reading moves between power states, so it would make the gate flaky
without telling the machines apart. Clocks sampled under load are not a fingerprint at all.

The reports' environment layout is read tolerantly: the first key whose dotted path matches
each field's pattern is used (``gpu.name``, ``gpus.0.name``, ``gpu_name`` all give the GPU
model). A field present on one side only is reported but is not a mismatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stallscope.profiler import runformat

__all__ = ["EnvironmentCheck", "clocks_from_run", "compare_environments", "fingerprint"]

CLOCK_TOLERANCE_PCT = 5.0

_EXACT_FIELDS = {
    "gpu_model": re.compile(r"(^|\.)(gpu|gpus\.0|device)(\.|_)(name|model)$|^gpu_model$|^gpu$"),
    "gpu_count": re.compile(r"(^|\.)(gpu_count|num_gpus|device_count)$"),
    "driver": re.compile(r"(^|\.)(driver|driver_version)$|(^|\.)gpus?\.(0\.)?driver(_version)?$"),
    "torch": re.compile(r"(^|\.)(torch|torch_version)$"),
    "cuda": re.compile(r"(^|\.)(cuda|cuda_version|torch_cuda)$"),
}
_CONFIGURED = re.compile(
    r"clock.*(max|app|default|base|locked)|(max|app|default|base|locked)[^.]*clock|power_limit", re.I
)
_AT_REST = re.compile(r"clock.*(rest|idle)|(rest|idle)[^.]*clock", re.I)


@dataclass
class EnvironmentCheck:
    """Outcome of comparing two fingerprints."""

    base: dict[str, Any]
    current: dict[str, Any]
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    allowed: bool = False

    @property
    def matches(self) -> bool:
        return not self.differences

    @property
    def status(self) -> str:
        if self.matches:
            return "pass"
        return "pass" if self.allowed else "inconclusive"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "matches": self.matches,
            "allowed_change": self.allowed,
            "differences": list(self.differences),
            "notes": list(self.notes),
            "baseline": self.base,
            "current": self.current,
        }


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(node, list):
        for i, value in enumerate(node[:1]):
            out.update(_flatten(value, f"{prefix}{i}."))
        if node and prefix:
            out.setdefault(f"{prefix[:-1]}_count_listed", len(node))
    elif node is not None:
        out[prefix[:-1]] = node
    return out


def fingerprint(environment: Any) -> dict[str, Any]:
    """Pick the compared fields out of a report's ``environment`` mapping."""
    flat = _flatten(environment if isinstance(environment, dict) else {})
    out: dict[str, Any] = {}
    for name, pattern in _EXACT_FIELDS.items():
        for key, value in flat.items():
            if pattern.search(key) and not isinstance(value, (dict, list)):
                out[name] = value
                break
    if "gpu_count" not in out:
        listed = next((v for k, v in flat.items() if re.search(r"(^|\.)gpus_count_listed$", k)), None)
        if listed is not None:
            out["gpu_count"] = listed
    for key, value in flat.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if _AT_REST.search(key):
            out[f"rest:{key}"] = value
        elif _CONFIGURED.search(key):
            out[f"clock:{key}"] = value
    return out


def clocks_from_run(run_dir: Path) -> dict[str, float]:
    """Clocks of a run directory's first rank with NVML samples, from its first sample.

    ``sm_clock_at_rest_mhz`` / ``mem_clock_at_rest_mhz`` are the first sample's clocks (before
    the first step's work); ``sm_clock_max_mhz`` and ``power_limit_w`` are static. Empty when
    the run has no NVML samples (CPU, no NVML).
    """
    for _, folder in runformat.rank_dirs(run_dir):
        rows = runformat.read_csv_rows(folder / runformat.NVML_CSV)
        if not rows:
            continue
        first = rows[0]
        out: dict[str, float] = {}
        for src, dst in (
            ("sm_clock_mhz", "sm_clock_at_rest_mhz"),
            ("mem_clock_mhz", "mem_clock_at_rest_mhz"),
            ("sm_clock_max_mhz", "sm_clock_max_mhz"),
            ("power_limit_w", "power_limit_w"),
        ):
            try:
                out[dst] = float(first.get(src) or "")
            except ValueError:
                pass
        return out
    return {}


def compare_environments(base_env: Any, current_env: Any, allow_change: bool = False) -> EnvironmentCheck:
    """Compare the fingerprints of two reports' environments."""
    base, current = fingerprint(base_env), fingerprint(current_env)
    check = EnvironmentCheck(base, current, allowed=allow_change)
    for key in sorted(set(base) | set(current)):
        if key not in base or key not in current:
            side = "baseline" if key not in base else "current"
            check.notes.append(f"{key} not recorded in the {side} report")
            continue
        b, c = base[key], current[key]
        if key.startswith(("clock:", "rest:")):
            if b and abs(float(c) / float(b) - 1.0) * 100.0 > CLOCK_TOLERANCE_PCT:
                text = f"{key[5 if key.startswith('rest:') else 6 :]}: {b} -> {c} (beyond {CLOCK_TOLERANCE_PCT:g}%)"
                (check.notes if key.startswith("rest:") else check.differences).append(text)
        elif str(b) != str(c):
            check.differences.append(f"{key}: {b} -> {c}")
    if not base and not current:
        check.notes.append("neither report records its environment; machines not compared")
    return check
