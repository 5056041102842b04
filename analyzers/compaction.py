"""Compaction at the source: write a trace's table files next to it, from the command line.

    python -m stallscope.analyzers.compaction TRACE [TRACE ...] [--rank N] [--form F] [--out FILE]

Each trace is parsed once (the normal loader) and written as

* its **full table** (``.<trace>.stallscope-table.npz``): the first ``FULL_RANKS`` ranks of a
  run, and any trace whose rank is unknown (``--form auto``, the default);
* its **compact form** (``.<trace>.stallscope-compact.npz``): the rank as
  :func:`analyzers.context.load_rank` loads it and :func:`analyzers.compact.compact_rank` cuts it,
  with its steps, breakdown and notices (every rank: it is small).

``diagnose`` then reads these (:mod:`analyzers.tablestore`) instead of the traces. The profiler
starts this at the end of each rank's trace window in a detached, low-priority process
(``profiler/window.py``; ``STALLSCOPE_COMPACT=0`` turns it off), so a 1,024-rank job leaves
1,024 small files for the cross-rank analysis. The rank is ``--rank``, else the rank folder's
number (``rank<N>``), else the trace's own. This is a separate module from
:mod:`analyzers.tablestore` because it uses :mod:`analyzers.context`, which imports the store.
No torch import.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stallscope.analyzers import tablestore
from stallscope.analyzers.compact import FULL_RANKS, compact_rank
from stallscope.analyzers.context import load_rank
from stallscope.analyzers.loader import load_trace
from stallscope.analyzers.model import EventTable, RankData
from stallscope.profiler import runformat
from stallscope.profiler.common import ToolError

__all__ = ["FORMS", "compact_trace", "main"]

FORMS = ("auto", "full", "compact", "both")


def compact_trace(trace: Path, rank: int | None = None, form: str = "auto", out: Path | None = None) -> list[Path]:
    """Parse ``trace`` and write its table files (see module doc); returns the paths written.
    ``out`` replaces the default location of the one form asked for (``full`` or ``compact``).
    Raises ToolError for a trace that cannot be read, OSError when a file cannot be written."""
    trace = Path(trace)
    if not trace.is_file():
        raise ToolError(f"{trace}: no such trace file; pass a *.json or *.json.gz trace")
    if rank is None:
        rank = runformat.rank_of(trace.parent)
    full = form in ("full", "both") or (form == "auto" and (rank is None or rank < FULL_RANKS))
    compact = form in ("compact", "both", "auto")
    key_full = tablestore.source_key(trace, tablestore.KEY_SPAN)
    key_compact = tablestore.source_key(trace, tablestore.COMPACT_KEY_SPAN)
    table, meta = load_trace(trace)
    written = []
    if full:  # before load_rank, which fills the step column and takes notices out of meta
        path = out if out is not None and not compact else tablestore.sidecar(trace, tablestore.TABLE_SUFFIX)
        written.append(tablestore.write_table(path, table, meta, key_full))
    if compact:
        own: list[str] = []
        rd = _load_rank(trace, rank, own, table, meta)
        compact_rank(rd)
        path = out if out is not None and not full else tablestore.sidecar(trace, tablestore.COMPACT_SUFFIX)
        written.append(tablestore.write_compact(path, rd, own, key_compact))
    st = trace.stat()
    if (st.st_size, st.st_mtime_ns) != (key_full["size"], key_full["mtime_ns"]):
        for p in written:  # the trace changed while it was read: its tables would not match it
            p.unlink(missing_ok=True)
        raise ToolError(f"{trace}: the file changed while it was read; run again once it is complete")
    return written


def _load_rank(trace: Path, rank: int | None, notices: list[str], table: EventTable, meta: dict[str, Any]) -> RankData:
    """context.load_rank on the table parsed here (its ``load`` hook): no second parse."""
    return load_rank(trace, rank, notices, load=lambda _p: (table, meta))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see module doc); returns the exit code."""
    ap = argparse.ArgumentParser(
        prog="python -m stallscope.analyzers.compaction",
        description="Write the table files of torch.profiler traces next to them, for fast diagnoses.",
    )
    ap.add_argument("traces", nargs="+", type=Path, metavar="TRACE")
    ap.add_argument(
        "--rank", type=int, default=None, help="the rank of the trace (default: rank<N> folder, else the trace's own)"
    )
    ap.add_argument("--form", choices=FORMS, default="auto", help="which tables: auto (default), full, compact, both")
    ap.add_argument(
        "--out", type=Path, default=None, help="write the one table asked for (--form full or compact) here"
    )
    ap.add_argument(
        "--nice", type=int, default=0, help="lower this process's priority by N first (the profiler uses 10)"
    )
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    args = ap.parse_args(argv)
    if args.out is not None and (len(args.traces) != 1 or args.form in ("auto", "both")):
        ap.error("--out takes one TRACE and --form full or --form compact")
    if args.nice > 0:
        try:
            os.nice(args.nice)
        except OSError:
            pass
    code = 0
    for trace in args.traces:
        t0 = time.perf_counter()
        try:
            written = compact_trace(trace, args.rank, args.form, args.out)
        except ToolError as exc:
            print(f"compaction: {exc}", file=sys.stderr)
            code = max(code, exc.exit_code)
            continue
        except OSError as exc:
            print(
                f"compaction: {trace}: table not written ({exc.strerror or exc}); pass --out to a writable place",
                file=sys.stderr,
            )
            code = max(code, 1)
            continue
        if not args.quiet:
            ms = (time.perf_counter() - t0) * 1e3
            print(f"{trace}: {', '.join(p.name for p in written)} ({ms:.0f} ms)")
    return code


if __name__ == "__main__":
    sys.exit(main())
