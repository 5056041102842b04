"""Environment fingerprint: is the current report measured on the same kind of machine?

A step-time comparison across a different GPU model, driver, torch or CUDA build, or a GPU
whose resting clocks differ (a different power/clock policy, another SKU of the same name)
says more about the machine than about the code. The gate compares these fields from the
reports' ``environment`` section and calls the verdict inconclusive on a mismatch unless
``--allow-env-change`` is given.

Clocks: only clock keys that name a resting, maximum or application clock are compared (the
clocks sampled under load move with temperature and power, and are not a fingerprint).

The reports' environment layout is read tolerantly: the first key whose dotted path matches
each field's pattern is used (``gpu.name``, ``gpus.0.name``, ``gpu_name`` all give the GPU
model). A field present on one side only is reported but is not a mismatch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EnvironmentCheck", "compare_environments", "fingerprint"]

CLOCK_TOLERANCE_PCT = 5.0

_EXACT_FIELDS = {
    "gpu_model": re.compile(r"(^|\.)(gpu|gpus\.0|device)(\.|_)(name|model)$|^gpu_model$|^gpu$"),
    "gpu_count": re.compile(r"(^|\.)(gpu_count|num_gpus|device_count)$"),
    "driver": re.compile(r"(^|\.)(driver|driver_version)$|(^|\.)gpus?\.(0\.)?driver(_version)?$"),
    "torch": re.compile(r"(^|\.)(torch|torch_version)$"),
    "cuda": re.compile(r"(^|\.)(cuda|cuda_version|torch_cuda)$"),
}
_CLOCK = re.compile(r"clock.*(rest|idle|max|app|default|base)|(rest|idle|max|app|default|base)[^.]*clock", re.I)


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
        if _CLOCK.search(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"clock:{key}"] = value
    return out


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
        if key.startswith("clock:"):
            if b and abs(float(c) / float(b) - 1.0) * 100.0 > CLOCK_TOLERANCE_PCT:
                check.differences.append(f"{key[6:]}: {b} -> {c} (beyond {CLOCK_TOLERANCE_PCT:g}%)")
        elif str(b) != str(c):
            check.differences.append(f"{key}: {b} -> {c}")
    if not base and not current:
        check.notes.append("neither report records its environment; machines not compared")
    return check
