"""The names a pipeline run leaves in MLflow: metric, param and tag keys and artifact paths of
the parent and of every stage run. `tests/data/run_keys.json` holds them as recorded before
the stage refactor (issue 17); `test_names.py` compares a fresh run against it.

Record again (only when a name changes on purpose, and say so in the commit):
    python tests/run_keys.py tests/data/run_keys.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

PIPED_CLASS = "circle|disc"
OWNER = "Vision team | audits"
# The shared pipeline run's settings (conftest `pipeline_run`): tiny and fast, every stage on.
TINY = [
    "train.width=8",
    "train.epochs=4",
    "train.progressive_scale=null",  # 4 toy epochs learn more reliably at full size
    "train.batch_size=16",
    "train.lr=0.05",
    "train.precision=fp32",
    "train.compile=false",
    "train.ema_decay=null",
    "train.tta_translate=0",
    "data.val_fraction=0.125",
    "benchmark.batch_sizes=[1, 8]",
    "benchmark.iterations=3",
    "benchmark.warmup=1",
    "export.parity_samples=16",
    "benchmark.backends=[torch-eager, onnx-fp32, onnx-int8]",
    "benchmark.min_seconds=0",
    "benchmark.max_seconds=1",
    "report.pdf=false",  # WeasyPrint is about 10 s of CPU a run: the shared run (test_review) prints one
]
SHARED_OVERRIDES = [*TINY, "report.pdf=true", "privacy.queries=2", f"card.owner={OWNER}"]


def _artifacts(client: Any, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(found)


def run_keys(uri: str, run_id: str) -> dict[str, dict[str, list[str]]]:
    """Run name ("parent" or the stage) -> {"metrics", "params", "tags", "artifacts": sorted names}.
    Tags MLflow sets itself (`mlflow.*` other than the description) are left out."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(run_id)
    runs = {"parent": parent}
    for child in client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
    ):
        runs[child.data.tags.get("auditflow.stage", child.info.run_name)] = child
    keep_tag = {"mlflow.note.content"}
    return {
        name: {
            "metrics": sorted(run.data.metrics),
            "params": sorted(run.data.params),
            "tags": sorted(t for t in run.data.tags if not t.startswith("mlflow.") or t in keep_tag),
            "artifacts": _artifacts(client, run.info.run_id),
        }
        for name, run in sorted(runs.items())
    }


def make_shared_data(root: Path) -> Path:
    """The shared run's toy image folder: first class renamed to one holding a `|`."""
    from conftest import make_image_folder

    data = make_image_folder(root / "toy")
    for split in ("train", "test"):
        (data / split / "circle").rename(data / split / PIPED_CLASS)
    return data


def main(out: str) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from auditflow.flows.pipeline import audit_pipeline

    root = Path(tempfile.mkdtemp(prefix="run-keys-"))
    data = make_shared_data(root)
    with prefect_test_harness(server_startup_timeout=120):
        result = audit_pipeline(profile="quick", data=str(data), overrides=SHARED_OVERRIDES, workdir=str(root / "w"))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(run_keys(result.tracking_uri, result.run_id), indent=1) + "\n")
    print(f"wrote {out} from run {result.run_id} ({root})")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(sys.argv[1])
