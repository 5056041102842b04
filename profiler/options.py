"""The profile options: one validated object, built once and passed to every stage.

The CLI's ``profile`` command and ``Session`` build a :class:`ProfileOptions` and call
:meth:`ProfileOptions.validate`; the ``profile`` parent hands it to the target through the
environment (:meth:`~ProfileOptions.to_env`), where the recorder reads it back with
:meth:`~ProfileOptions.from_env`. Defaults and bounds live here and nowhere else (docs/cli.md
documents them). Stdlib only: the injected bootstrap reads it before torch is imported.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stallscope.profiler.common import ToolError

__all__ = ["ProfileOptions", "PCIE_PERIOD_S", "PARENT_PID_ENV"]

# NVML's PCIe counters take ~20 ms per direction to read (the driver samples over that interval),
# so they are read every 5 s by default; 0 turns them off.
PCIE_PERIOD_S = 5.0

# Environment variables that carry the options into the target (see to_env / from_env).
_ENV = {
    "skip": "STALLSCOPE_SKIP",
    "steps": "STALLSCOPE_STEPS",
    "sample_hz": "STALLSCOPE_SAMPLE_HZ",
    "stack": "STALLSCOPE_STACK",
    "memory": "STALLSCOPE_MEMORY",
    "nvml": "STALLSCOPE_NVML",
    "auto_patch": "STALLSCOPE_AUTOPATCH",
    "patch_steps": "STALLSCOPE_PATCH_STEPS",
    "pcie_period_s": "STALLSCOPE_PCIE_PERIOD_S",
}
# The pid of the process that builds the target's environment (the `stallscope profile` parent):
# the target watches it and marks the run orphaned when it dies first (profiler/upkeep.py).
PARENT_PID_ENV = "STALLSCOPE_PARENT_PID"
# Options without a command-line flag: the user sets them in the environment of `stallscope`
# (or of the process that opens a Session).
_ENV_ONLY = ("nvml", "pcie_period_s")


@dataclass(frozen=True)
class ProfileOptions:
    """What ``stallscope profile`` (or a ``Session``) records; see docs/cli.md.

    Attributes:
        skip: steps before the full trace window.
        steps: steps in the full trace window.
        sample_hz: NVML and host sampling rate.
        stack: record Python stacks in the window.
        memory: record allocator events in the window.
        nvml: sample the GPU with NVML (``STALLSCOPE_NVML=0`` turns it off).
        auto_patch: apply the fixes the diagnosis calls for, keep what is faster.
        patch_steps: steps measured before and after each patch.
        pcie_period_s: seconds between PCIe counter reads (0: none).
    """

    skip: int = 5
    steps: int = 5
    sample_hz: float = 25.0
    stack: bool = False
    memory: bool = False
    nvml: bool = True
    auto_patch: bool = False
    patch_steps: int = 20
    pcie_period_s: float = PCIE_PERIOD_S

    def validate(self) -> ProfileOptions:
        """Return ``self`` when every value is in bounds, else raise a one-line :class:`ToolError`."""
        # --skip 0 traces from the first step; a negative count means nothing.
        if self.skip < 0:
            raise ToolError(f"--skip {self.skip}: must be 0 or more")
        # a window of no step would hold no ProfilerStep range to analyse
        if self.steps < 1:
            raise ToolError(f"--steps {self.steps}: must be 1 or more")
        # below 0.1 Hz a run of minutes has too few samples to show anything; above 1 kHz the
        # sampler thread would take the GIL from the training loop more than NVML can refresh
        if not 0.1 <= self.sample_hz <= 1000:
            raise ToolError(f"--sample-hz {self.sample_hz:g}: must be between 0.1 and 1000")
        # the before/after comparison is a rank test on per-step times: it needs two steps a side
        if self.patch_steps < 2:
            raise ToolError(f"--patch-steps {self.patch_steps}: must be 2 or more")
        if self.pcie_period_s < 0:
            raise ToolError(f"STALLSCOPE_PCIE_PERIOD_S={self.pcie_period_s:g}: must be 0 (off) or more")
        return self

    def to_env(self) -> dict[str, str]:
        """The ``STALLSCOPE_*`` variables that carry these options into the target, and this
        process's pid (``STALLSCOPE_PARENT_PID``), which the target watches."""
        out = {PARENT_PID_ENV: str(os.getpid())}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                out[_ENV[f.name]] = "1" if value else "0"
            elif isinstance(value, float):
                out[_ENV[f.name]] = repr(float(value))
            else:
                out[_ENV[f.name]] = str(value)
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProfileOptions:
        """The options ``to_env`` wrote (variables not set keep their defaults), validated.

        A value that does not parse raises a ToolError naming the variable.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(_ENV[f.name])
            if raw is None or raw == "":
                continue
            kind: type[Any] = type(f.default)  # every field has a default
            if kind is bool:
                values[f.name] = raw.strip() not in ("0", "false", "False", "no")
                continue
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ToolError(f"{_ENV[f.name]}={raw!r}: not a number") from None
        return cls(**values).validate()

    @classmethod
    def from_user(cls, env: Mapping[str, str] | None = None, **values: Any) -> ProfileOptions:
        """The options a user asked for: ``values`` (the CLI's or a Session's arguments) plus the
        environment-only knobs (``STALLSCOPE_NVML``, ``STALLSCOPE_PCIE_PERIOD_S``), validated."""
        base = cls.from_env(env)
        knobs = {name: getattr(base, name) for name in _ENV_ONLY}
        return cls(**{**knobs, **values}).validate()

    def meta(self) -> dict[str, Any]:
        """The options as recorded in ``meta.yaml`` (``window`` carries skip and steps)."""
        return {
            "sample_hz": self.sample_hz,
            "stack": self.stack,
            "memory": self.memory,
            "auto_patch": self.auto_patch,
            "patch_steps": self.patch_steps,
        }

    def replace(self, **changes: Any) -> ProfileOptions:
        """A copy with ``changes`` applied (not validated: call :meth:`validate`)."""
        return dataclasses.replace(self, **changes)
