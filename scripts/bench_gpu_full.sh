#!/usr/bin/env bash
# Issue 10's GPU measurement: the full profile's model on every GPU backend that loads here
# (torch eager / compile / CUDA graphs fp16 and bf16; ONNX Runtime CUDA fp32/fp16 with I/O
# binding and TensorRT fp16 when the onnxruntime build has them), ratios against torch eager on
# the same GPU, in one `auditflow bench` call. Backends that cannot run are listed with the reason.
#
#   scripts/bench_gpu_full.sh WORKDIR [RUN_ID]      (without RUN_ID: trains the full profile first)
set -euo pipefail
workdir=${1:?usage: $0 WORKDIR [RUN_ID]}
run_id=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
af="$here/.venv/bin/auditflow"
data=${DATA:-$here/../shared/datasets/cifar10-jpeg.tar.gz}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
if [[ -z "$run_id" ]]; then
  "$af" run --profile full --data "$data" --workdir "$workdir" --run-name full-for-bench
  run_id=$("$here/.venv/bin/python" - "$workdir" <<'PY'
import sys
from pathlib import Path
from mlflow.tracking import MlflowClient
c = MlflowClient(f"sqlite:///{(Path(sys.argv[1]) / 'mlflow.db').resolve()}")
runs = c.search_runs([e.experiment_id for e in c.search_experiments()], "attributes.run_name = 'full-for-bench'",
                     order_by=["attributes.start_time DESC"], max_results=1)
print(runs[0].info.run_id)
PY
)
fi
"$af" bench "$run_id" --workdir "$workdir" \
  --set 'benchmark.backends=[torch-eager-cuda, torch-compile-cuda, torch-cudagraph-fp16-cuda, torch-cudagraph-bf16-cuda, onnx-fp32-cuda, onnx-fp16-cuda, onnx-fp16-tensorrt]' \
  --set 'benchmark.batch_sizes=[1, 64, 256, 1024]' --set benchmark.max_seconds=10
