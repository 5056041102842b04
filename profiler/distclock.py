"""Align the ranks' clocks right after ``torch.distributed.init_process_group``.

Every rank leaves a barrier at nearly the same instant (within the barrier's release latency,
microseconds on one host, tens of microseconds across a fabric), reads its own clock, and the
readings are exchanged. ``rank_offset_ns`` is this rank's clock minus rank 0's at that instant;
the median of several rounds damps a late wake-up. Subtracting it puts every rank's timestamps on
rank 0's clock, so cross-rank timelines line up; the straggler analysis itself does not need it
(it compares collective durations, which no clock offset changes).

The exchange runs on a separate gloo group, so it works for any backend (NCCL needs no device
for it) and never touches the user's process group. ``STALLSCOPE_CLOCK_SYNC=0`` turns it off.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ROUNDS", "clock_info", "install", "measure_rank_offset", "result"]

ROUNDS = 5
_result: dict[str, Any] = {}


def result() -> dict[str, Any]:
    """The last measurement: ``rank_offset_ns``, ``spread_ns``, ``rounds``, ``method`` (or empty)."""
    return dict(_result)


def clock_info() -> dict[str, Any]:
    """The rank-offset part of rank.yaml's ``clock`` section (empty before a measurement)."""
    res = _result
    if not res:
        return {}
    out = {
        "rank_offset_ns": res.get("rank_offset_ns"),
        "rank_offset_spread_ns": res.get("spread_ns"),
        "rank_offset_method": res.get("method"),
    }
    if res.get("error"):
        out["rank_offset_error"] = res["error"]
    return out


def measure_rank_offset(rounds: int = ROUNDS) -> dict[str, Any]:
    """Exchange clock readings after barriers on a private gloo group; call on every rank."""
    import torch.distributed as dist

    group = dist.new_group(backend="gloo")
    rank = dist.get_rank()
    offsets: list[int] = []
    for _ in range(rounds):
        dist.barrier(group=group)
        now = time.time_ns()
        readings: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(readings, now, group=group)
        offsets.append(int(readings[rank]) - int(readings[0]))
    dist.destroy_process_group(group)
    return {
        "rank_offset_ns": int(statistics.median(offsets)),
        "spread_ns": int(max(offsets) - min(offsets)),
        "rounds": rounds,
        "method": "gloo barrier + all_gather of time.time_ns() after init_process_group",
    }


def install(on_done: Callable[[dict[str, Any]], None] | None = None) -> bool:
    """Wrap ``torch.distributed.init_process_group`` so the offset is measured once after it.

    Returns False (and changes nothing) when turned off or when torch.distributed is unusable.
    Errors during the exchange are recorded in :func:`result`, never raised into the target.
    """
    if os.environ.get("STALLSCOPE_CLOCK_SYNC", "1") == "0":
        return False
    try:
        import torch.distributed as dist
    except Exception:
        return False
    if not dist.is_available() or getattr(dist.init_process_group, "_stallscope_wrapped", False):
        return False
    original = dist.init_process_group

    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        try:
            _result.clear()
            _result.update(measure_rank_offset())
        except Exception as exc:  # a failed sync must not break the user's job
            _result.update({"rank_offset_ns": None, "error": f"{exc.__class__.__name__}: {exc}"})
        if on_done is not None:
            try:
                on_done(dict(_result))
            except Exception:
                pass
        return out

    init_process_group._stallscope_wrapped = True  # type: ignore[attr-defined]
    init_process_group.__wrapped__ = original  # type: ignore[attr-defined]
    dist.init_process_group = init_process_group
    return True
