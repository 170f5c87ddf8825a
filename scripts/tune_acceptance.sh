#!/usr/bin/env bash
# Acceptance studies of issue 12 (`auditflow tune`), on CIFAR-10 (JPEG q75) from the shared copy.
#
#   scripts/tune_acceptance.sh small  [WORKDIR]  # 20 trials on 500 images (50 per class), then the tuned
#                                                # and the untuned quick profile at the same training budget
#   scripts/tune_acceptance.sh resume [WORKDIR]  # a 6-trial study on 5,000 images, killed mid-trial, resumed
#   THREADS=1 scripts/tune_acceptance.sh ...       # torch on one core (a shared machine)
#   BUDGET_S=5 scripts/tune_acceptance.sh small    # seconds of training per trial and final run
#                                                # (default 10 for small, 20 for resume)
#
# Both fix train.time_budget_s, so every trial and both final runs get the same seconds of training;
# epochs are then the most a run may take within it. torch.compile is off: its warm-up is not
# training time but costs wall time per trial. DATA=... picks another archive.
set -euo pipefail
cd "$(dirname "$0")/.."
AF=.venv/bin/auditflow
DATA=${DATA:-../shared/datasets/cifar10-jpeg.tar.gz}
mode=${1:?usage: $0 small|resume [WORKDIR]}
work=${2:-/tmp/auditflow-tune-$mode}
mkdir -p "$work"
# THREADS=1 pins torch to one core (a shared machine); both final runs get the same setting.
PIN=(${THREADS:+--set train.num_threads=$THREADS})
# Audit stages of the two final runs, lighter; none of these touches training.
LIGHT=(--set fairness.n_bootstrap=50 --set privacy.n_bootstrap=50 --set benchmark.iterations=5
       --set "benchmark.batch_sizes=[1, 64]" --set export.parity_samples=64)

case "$mode" in
small)
  BASE=(--set data.max_train_per_class=50 --set data.max_test_per_class=100 --set data.val_fraction=0.2
        --set train.time_budget_s=${BUDGET_S:-10} --set train.compile=false --set train.val_subset=null "${PIN[@]}")
  cat > "$work/space.yaml" <<'YAML'
train.lr: {low: 0.01, high: 0.5, log: true}
train.weight_decay: {low: 1.0e-5, high: 5.0e-3, log: true}
train.width: {choices: [16, 24, 32, 48]}
train.epochs: {low: 5, high: 40}
train.label_smoothing: {low: 0.0, high: 0.3}
train.ema_decay: {choices: [null, 0.9, 0.98, 0.99]}
train.batch_size: {choices: [16, 32, 64, 128, 256]}
YAML
  $AF tune --profile quick --data "$DATA" --trials 20 --space "$work/space.yaml" --study small-acceptance \
    --out "$work/tuned.yaml" --workdir "$work" "${BASE[@]}"
  $AF run --profile quick --data "$DATA" --workdir "$work" --run-name untuned-quick "${BASE[@]}" "${LIGHT[@]}"
  # the tuned profile already holds BASE (the study's base config) and the chosen values
  $AF run --profile "$work/tuned.yaml" --data "$DATA" --workdir "$work" --run-name tuned "${LIGHT[@]}"
  .venv/bin/python - "$work" <<'PY'
import sys
from auditflow.core.tracking import Tracker
tracker = Tracker(f"sqlite:///{sys.argv[1]}/mlflow.db")
experiment = tracker.client.get_experiment_by_name("auditflow").experiment_id
for name in ("untuned-quick", "tuned"):
    run = tracker.client.search_runs([experiment], filter_string=f"attributes.run_name = '{name}'")[0]
    evaluate = tracker.children(run)["evaluate"]
    m = evaluate.data.metrics
    print(f"{name}: test accuracy {m['evaluate/test_accuracy_no_tta']:.2%} shipped (no TTA), "
          f"{m['evaluate/test_accuracy']:.2%} with TTA (run {run.info.run_id})")
PY
  ;;
resume)
  BASE=(--set data.max_train_per_class=500 --set data.max_test_per_class=200
        --set train.time_budget_s=${BUDGET_S:-20} --set train.compile=false "${PIN[@]}")
  ARGS=(--profile quick --data "$DATA" --trials 6 --study cifar-resume --workdir "$work" "${BASE[@]}")
  # killed (SIGKILL, the whole process group) about 2 minutes in: mid-trial, after a few finished
  timeout -s KILL "${KILL_AFTER:-120}" $AF tune "${ARGS[@]}" || echo "--- killed after ${KILL_AFTER:-120} s (expected)"
  .venv/bin/python - "$work" <<'PY'
import sys, optuna
study = optuna.load_study(study_name="cifar-resume", storage=f"sqlite:///{sys.argv[1]}/optuna.db")
print("after the kill:", [(t.number, t.state.name) for t in study.trials])
PY
  $AF tune "${ARGS[@]}"  # same study name: resumes
  .venv/bin/python - "$work" <<'PY'
import sys, optuna
study = optuna.load_study(study_name="cifar-resume", storage=f"sqlite:///{sys.argv[1]}/optuna.db")
print("after the resume:", [(t.number, t.state.name, t.params.get("train.lr")) for t in study.trials])
PY
  ;;
*) echo "unknown mode $mode; give small or resume" >&2; exit 2 ;;
esac
