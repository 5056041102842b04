"""Beyond FULL_RANKS, ranks keep compact tables with the same breakdown and collectives."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from stallscope.analyzers.builtin.communication import collectives_of
from stallscope.analyzers.compact import FULL_RANKS
from stallscope.analyzers.context import load_context

SRC = Path(__file__).resolve().parent / "fixtures" / "gpu" / "ddp_h200" / "straggler_data"


def test_compacted_ranks_keep_breakdown_and_collectives(tmp_path: Path) -> None:
    n = FULL_RANKS + 2
    for r in range(n):
        data = json.load(gzip.open(SRC / f"rank{r % 2}.pt.trace.json.gz"))
        data["distributedInfo"] = dict(data.get("distributedInfo") or {}, rank=r, world_size=n)
        with gzip.open(tmp_path / f"rank{r}.pt.trace.json.gz", "wt") as fh:
            json.dump(data, fh)
    ctx = load_context(tmp_path)
    assert [rd.rank for rd in ctx.ranks] == list(range(n))
    full, compact = ctx.ranks[1], ctx.ranks[n - 1]
    assert compact.meta.get("compacted") and not full.meta.get("compacted")
    assert len(compact.events) < len(full.events)
    assert [b.parts() for b in compact.breakdown] == [b.parts() for b in full.breakdown]
    a, b = collectives_of(full, n), collectives_of(compact, n)
    assert [(c.key, c.dur_ns, c.nbytes) for c in a] == [(c.key, c.dur_ns, c.nbytes) for c in b]
    assert any("per-rank analyzers looked at the first" in x for x in ctx.notices)
