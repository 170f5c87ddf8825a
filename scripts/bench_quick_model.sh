#!/usr/bin/env bash
# Issue 10's CPU measurement: torch eager / torch.compile / ONNX Runtime FP32 / INT8 on the quick
# profile's model, side by side in one benchmark, at batch 1, 32 and 256, logged to the run.
# Run it on an otherwise idle machine (the numbers are only as quiet as the CPU).
#
#   scripts/bench_quick_model.sh WORKDIR [RUN_ID]
#
# Without RUN_ID it first trains the quick profile on the CIFAR-10 archive in WORKDIR (about
# 5 minutes on 2 cores), then benchmarks that run. The benchmark itself takes about 2-3 minutes.
set -euo pipefail
workdir=${1:?usage: $0 WORKDIR [RUN_ID]}
run_id=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
af="$here/.venv/bin/auditflow"
data=${DATA:-$here/../shared/datasets/cifar10-jpeg.tar.gz}

echo "== CPU"; lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core"
echo "flags: $(grep -o -w -E 'avx2|fma|avx512f|avx512_vnni|avx512_bf16|avx_vnni|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"

if [[ -z "$run_id" ]]; then
  "$af" run --profile quick --data "$data" --workdir "$workdir" --run-name quick-for-bench
  run_id=$("$here/.venv/bin/python" - "$workdir" <<'PY'
import sys
from pathlib import Path
from mlflow.tracking import MlflowClient
c = MlflowClient(f"sqlite:///{(Path(sys.argv[1]) / 'mlflow.db').resolve()}")
runs = c.search_runs([e.experiment_id for e in c.search_experiments()], "attributes.run_name = 'quick-for-bench'",
                     order_by=["attributes.start_time DESC"], max_results=1)
print(runs[0].info.run_id)
PY
)
fi

"$af" bench "$run_id" --workdir "$workdir" \
  --set 'benchmark.backends=[torch-eager, torch-compile, onnx-fp32, onnx-int8]' \
  --set 'benchmark.batch_sizes=[1, 32, 256]'
"$af" report "$run_id" --workdir "$workdir"
