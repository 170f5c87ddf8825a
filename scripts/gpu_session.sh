#!/usr/bin/env bash
# Issue 21's GPU checks in one call, on a GPU machine whose python3 has torch but neither Prefect
# nor MLflow (the workplace's lent GPU; NOTES.md): the GPU tests, the `full` profile over seeds
# through the pipeline's own `fit` (scripts/gpu_train_bench.py), the public record (airbench94)
# on the same data and GPU, the same profile with an older source tree for a before/after, and
# a profiler trace of training steps. Each step has a time limit; steps that would start too
# late are skipped and say so. Logs and JSON land in $OUT.
#
#   DATA=cifar10-jpeg.tar.gz [WHEELS=dir] [PEER=dir] [OLD=src-dir] [BUDGET_S=540] [SEEDS=5] [SETS=...] \
#     [STEPS="full peer pytest old trace"] [VARIANTS=file] scripts/gpu_session.sh
#
# WHEELS: pydantic and its needs for this python (installed to /tmp/site); PEER: a folder with
# airbench_peer.py and the airbench package (../shared/bench/README.md); OLD: a folder holding an
# older `auditflow/` and `models/` (git archive REV auditflow models). scripts/gpu_prepare.sh
# fills .gpu/ with the archive and all three.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$here/gpu-out}
data=${DATA:?DATA=archive}
budget=${BUDGET_S:-540}
seeds=${SEEDS:-5}
mkdir -p "$out"
t0=$SECONDS

step() {  # NAME LIMIT_S COMMAND...: run with a limit, log to $out/NAME.log, show its tail
  local name=$1 limit=$2 left=$((budget - (SECONDS - t0)))
  shift 2
  if ((left < 30)); then echo "=== $name: skipped, $left s of the budget left"; return; fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit $limit s, at $((SECONDS - t0)) s)"
  local s=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - s)) s"
  grep -vE '^\s*$|Warning|warn\(' "$out/$name.log" | tail -n "${TAIL:-12}"
}

shim() {  # SRC DEST: an importable `auditflow` from a source tree (its top-level folders are subpackages)
  mkdir -p "$2/auditflow"
  ln -sfn "$1"/auditflow/* "$2/auditflow/"
  for d in models audits tasks flows; do [[ -d "$1/$d" ]] && ln -sfn "$1/$d" "$2/auditflow/$d"; done
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
site=/tmp/site
if [[ -n "${WHEELS:-}" ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl || exit 1
fi
shim "$here" /tmp/af-new
new="$site:/tmp/af-new"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
read -ra sets <<<"${SETS:-}"  # e.g. SETS="--set train.epochs=10"
bench=(python3 "$here/scripts/gpu_train_bench.py" "$data" --cache /tmp/af-cache --profile full "${sets[@]}")

steps=" ${STEPS:-full peer pytest old trace} "  # which of the standard steps to run
want() { [[ "$steps" == *" $1 "* ]]; }
want full && PYTHONPATH=$new step full "${BUDGET_FULL:-240}" "${bench[@]}" --seeds "$seeds" --out "$out/full.json"
if [[ -n "${PEER:-}" ]] && want peer; then
  step peer 150 python3 "$PEER/airbench_peer.py" "$data" --variant 94 --runs "$seeds" --out "$out/peer.json"
fi
# -P: the checkout's own auditflow/ (no models/ in it) must not shadow the importable one
want pytest && (cd "$here" && PYTHONPATH=$new step pytest 180 python3 -P -m pytest tests/test_gpu.py -q -p no:cacheprovider)
if [[ -n "${OLD:-}" ]] && want old; then
  shim "$OLD" /tmp/af-old
  PYTHONPATH="$site:/tmp/af-old" step full-old 120 "${bench[@]}" --seeds 2 --out "$out/full-old.json"
fi
want trace && TAIL=30 PYTHONPATH=$new step trace 90 "${bench[@]}" --seeds 0 --trace 40 --out "$out/trace.json"
# VARIANTS=file: lines "NAME SEEDS ARGS..." (e.g. "bs1024 3 --set train.batch_size=1024"), each run
# as the full profile with those arguments after the steps above
while read -r name n args; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  read -ra more <<<"$args"
  PYTHONPATH=$new step "$name" 150 "${bench[@]}" --seeds "$n" "${more[@]}" --out "$out/$name.json"
done < "${VARIANTS:-/dev/null}"
echo "=== done at $((SECONDS - t0)) s"
