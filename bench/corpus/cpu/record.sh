#!/usr/bin/env bash
# A 2-rank CPU (gloo) DDP run directory for the accuracy corpus: bench/distributed/ddp_train.py
# under `stallscope profile` with its default window, rank 1's batches ~26 ms slower to produce
# (0.4 ms per sample x 64: a straggler by data). Run from the repository root; writes bench/corpus/cpu/ddp2_data_straggler_run/.
set -euo pipefail
out=bench/corpus/cpu/ddp2_data_straggler_run
rm -rf "$out"
python3 -m stallscope.cli profile -q --no-diagnose -o "$out" -- \
  python3 -m torch.distributed.run --nproc-per-node 2 bench/distributed/ddp_train.py \
  --steps 30 --dim 512 --layers 4 --batch 64 --plant data --slow-rank 1 --slow-factor 1.0 --pace-ms 0
