#!/usr/bin/env bash
# Run several GPU scripts in one device call. Usage (from the repo root, on the GPU machine):
#   OUT=/some/dir bash bench/gpu_batch.sh "name1:seconds:command ..." "name2:seconds:command ..."
# Each command runs with its own time limit and its own log; results written under $OUT/<name>/
# by the command (it sees OUT=$OUT/<name>) are packed into $OUT/<name>.tar.gz, split into 15 MB
# parts (<name>.tar.gz.partaa, ...; join with cat) when larger, because the device tool returns
# at most 8 files of 16 MiB each.
set -u
root_out=${OUT:?set OUT}
export PYTHONUNBUFFERED=1
# The scripts import stallscope from the installed package, so install this checkout first: editable,
# offline, without dependencies (the GPU machine has them and no network). PIP_BREAK_SYSTEM_PACKAGES
# lets it through on a distribution Python that marks itself externally managed.
if ! PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
  # No usable build backend there: a link named stallscope to this checkout gives the same imports
  # (python3 -m stallscope.cli; no `stallscope` console script).
  mkdir -p /tmp/stallscope-src && ln -sfn "$PWD" /tmp/stallscope-src/stallscope
  export PYTHONPATH="/tmp/stallscope-src${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu_batch: pip could not install the checkout; stallscope is imported through /tmp/stallscope-src" >&2
fi
python3 -c 'import stallscope.cli' || { echo "gpu_batch: stallscope is not importable" >&2; exit 2; }
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/site"
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c 'import torch;print("torch", torch.__version__, torch.version.cuda)'; } > "$root_out/env.txt" 2>&1
summary="$root_out/summary.txt"; : > "$summary"
for spec in "$@"; do
  name=${spec%%:*}; rest=${spec#*:}; secs=${rest%%:*}; cmd=${rest#*:}
  mkdir -p "$root_out/$name"
  start=$(date +%s)
  OUT="$root_out/$name" timeout --signal=INT --kill-after=10 "$secs" bash -c "$cmd" > "$root_out/$name/log.txt" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - start ))s" | tee -a "$summary"
  tail -n 15 "$root_out/$name/log.txt" | sed "s/^/  [$name] /"
done
for spec in "$@"; do
  name=${spec%%:*}
  tar -czf "$root_out/$name.tar.gz" -C "$root_out" "$name" 2>/dev/null && rm -rf "${root_out:?}/$name"
  if [ "$(stat -c %s "$root_out/$name.tar.gz")" -gt 15000000 ]; then
    split -b 15000000 "$root_out/$name.tar.gz" "$root_out/$name.tar.gz.part" && rm "$root_out/$name.tar.gz"
  fi
done
ls -la "$root_out"
cat "$summary"
