"""TensorBLEU on the GPU vs NLTK sentence_bleu on the same machine's CPU.

    python3 bench/tensorbleu_gpu.py            # on the GPU machine, writes $OUT/tensorbleu.yaml
    python3 bench/tensorbleu_gpu.py --quick    # tiny sizes, any machine (CPU if no CUDA)

Cases B in {32,128,256,512} x L in {256,1024} token ids from a 50,257-token vocabulary, one
reference per sentence made from the candidate with 30 % of its tokens replaced and a random
length change (so there are matches at every order). The NLTK baseline is what a training loop
does: copy the ids to the host, ``.tolist()``, one ``sentence_bleu`` per sentence (median of
``--nltk-reps`` runs). TensorBLEU: ``sentence_bleu`` on the device with packed keys, median of
``--reps`` CUDA-synchronised runs after warm-up; also the unpacked (vocab unknown) and the
``torch.unique`` backends. Every case also checks max |TensorBLEU - NLTK| (float64).
Goal: speedup >= 40x at B=256, L=1024 (TensorBLEU paper, A100).
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from stallscope.fixes.tensorbleu import sentence_bleu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the sibling bench package (bench.recorded)
from bench.recorded import recorded_command  # noqa: E402

VOCAB = 50257


def make_batch(batch: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    cand = torch.randint(0, VOCAB, (batch, length), generator=gen)
    ref = cand.clone()
    replace = torch.rand(batch, length, generator=gen) < 0.3
    ref[replace] = torch.randint(0, VOCAB, (int(replace.sum()),), generator=gen)
    cand_len = length - torch.randint(0, max(1, length // 8), (batch,), generator=gen)
    ref_len = length - torch.randint(0, max(1, length // 8), (batch, 1), generator=gen)
    return cand, ref.unsqueeze(1), cand_len, ref_len


def nltk_loop(cand: torch.Tensor, ref: torch.Tensor, cand_len: torch.Tensor, ref_len: torch.Tensor) -> list[float]:
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

    smooth = SmoothingFunction().method1
    hyps, refs = cand.cpu().tolist(), ref.cpu().tolist()  # the device -> host copy is part of the baseline
    lc, lr = cand_len.cpu().tolist(), ref_len.cpu().tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [
            nltk_sentence_bleu([r[0][: lr[i][0]]], h[: lc[i]], smoothing_function=smooth)
            for i, (h, r) in enumerate(zip(hyps, refs))
        ]


def timed(fn, reps: int, device: torch.device) -> tuple[float, object]:
    out = fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), out


def sync_free(device: torch.device, gen: torch.Generator) -> dict:
    """Run the default path under ``torch.cuda.set_sync_debug_mode("error")``: any host sync raises."""
    if device.type != "cuda":
        return {"checked": False, "why": "no CUDA device"}
    cand, ref, cand_len, ref_len = (t.to(device) for t in make_batch(64, 512, gen))
    out = {}
    for name, vocab in (("packed", VOCAB), ("unpacked", None)):
        sentence_bleu(cand, ref, candidate_lengths=cand_len, reference_lengths=ref_len, smoothing=1, vocab_size=vocab)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            sentence_bleu(cand, ref, candidate_lengths=cand_len, reference_lengths=ref_len, smoothing=1, vocab_size=vocab)
            out[f"{name}_host_syncs"] = 0
        except RuntimeError as exc:
            out[f"{name}_host_syncs"] = f"synchronising call: {str(exc).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {"checked": True, **out}


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def environment(out: Path) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": str(torch.__version__), "cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads(),
           "cpu": cpu_model(), "command": recorded_command([sys.executable, __file__, *sys.argv[1:]], out)}
    try:
        import nltk

        env["nltk"] = nltk.__version__
    except ImportError:
        env["nltk"] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        try:
            import pynvml

            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # noqa: BLE001 - the driver is informative only
            env["driver"] = None
    else:
        env["gpu"] = None
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test on any machine)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--nltk-reps", type=int, default=3)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    try:
        import nltk  # noqa: F401
    except ImportError:
        print("nltk is not importable: install the wheel first (pip install --no-deps --target /tmp/site .whl/nltk-*.whl; "
              "PYTHONPATH=/tmp/site)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = [(b, l) for l in (256, 1024) for b in (32, 128, 256, 512)]
    if args.quick:
        sizes, args.reps, args.nltk_reps = [(8, 64), (16, 128)], 3, 1
    gen = torch.Generator().manual_seed(0)
    cases = []
    for batch, length in sizes:
        cand, ref, cand_len, ref_len = make_batch(batch, length, gen)
        d = [t.to(device) for t in (cand, ref, cand_len, ref_len)]
        kwargs = dict(candidate_lengths=d[2], reference_lengths=d[3], smoothing=1)
        nltk_ms, want = timed(lambda: nltk_loop(*d), args.nltk_reps, device)
        tb_ms, got = timed(lambda: sentence_bleu(d[0], d[1], vocab_size=VOCAB, **kwargs), args.reps, device)
        unpacked_ms, got_unpacked = timed(lambda: sentence_bleu(d[0], d[1], **kwargs), args.reps, device)
        unique_ms, got_unique = None, None
        if batch * length <= 128 * 1024:  # the (sentence x dictionary) table of the unique backend grows as B*U
            unique_ms, got_unique = timed(
                lambda: sentence_bleu(d[0], d[1], vocab_size=VOCAB, backend="unique", **kwargs), max(3, args.reps // 4),
                device)
        want_t = torch.tensor(want, dtype=torch.float64)
        diff = max((g.cpu() - want_t).abs().max().item() for g in (got, got_unpacked, got_unique) if g is not None)
        case = {"batch": batch, "tokens": length, "nltk_ms": round(nltk_ms, 3), "tensorbleu_ms": round(tb_ms, 3),
                "speedup": round(nltk_ms / tb_ms, 2), "tensorbleu_unpacked_ms": round(unpacked_ms, 3),
                "tensorbleu_unique_backend_ms": round(unique_ms, 3) if unique_ms else None,
                "max_abs_diff_vs_nltk": float(f"{diff:.3g}")}
        cases.append(case)
        print(f"B={batch:4d} L={length:5d}  nltk {nltk_ms:9.2f} ms  tensorbleu {tb_ms:8.3f} ms  "
              f"x{nltk_ms / tb_ms:7.1f}  (unpacked {unpacked_ms:.3f}, unique {unique_ms})  |diff| {diff:.2g}",
              flush=True)
    result_sync = sync_free(device, gen)
    headline = next((c for c in cases if c["batch"] == 256 and c["tokens"] == 1024), None)
    result = {"schema": 1, "benchmark": "tensorbleu", **environment(Path(args.out)), "device": str(device),
              "vocab_size": VOCAB, "references": 1, "smoothing": "method1",
              "goal": "speedup >= 40 at batch 256, 1024 tokens", "host_sync_check": result_sync, "cases": cases}
    if headline:
        result["speedup_b256_l1024"] = headline["speedup"]
        result["goal_met"] = bool(headline["speedup"] >= 40)
    result["max_abs_diff_vs_nltk"] = max(c["max_abs_diff_vs_nltk"] for c in cases)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from stallscope.profiler.common import write_yaml

    write_yaml(out / "tensorbleu.yaml", result)
    print(f"\n{'B':>5} {'L':>5} {'nltk_ms':>10} {'tensorbleu_ms':>14} {'speedup':>8}")
    for c in cases:
        print(f"{c['batch']:>5} {c['tokens']:>5} {c['nltk_ms']:>10.2f} {c['tensorbleu_ms']:>14.3f} {c['speedup']:>8.1f}")
    print(f"max |diff| vs NLTK: {result['max_abs_diff_vs_nltk']:.3g}; wrote {out / 'tensorbleu.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
