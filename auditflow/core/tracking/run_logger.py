"""`RunLogger`: the logging calls bound to one run id, and the names a stage's results are
logged under (`<stage>/summary.json`, `<stage>/checks.json`, `verdict/<group>` tags, the run's
description), which `Tracker.load_run` reads back for the report.

Re-exported by `auditflow.core.tracking`; import from there.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from auditflow.core.checks import Check, verdicts
from auditflow.core.names import CHECKS, NOTE_TAG, SUMMARY, verdict_tag


@contextlib.contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (needed by `mlflow.onnx.log_model`) at `uri` for a moment.

    `mlflow.set_tracking_uri` also writes $MLFLOW_TRACKING_URI, which would leak into every
    later run in this process; both are restored on exit.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_env, saved_uri = os.environ.get("MLFLOW_TRACKING_URI"), utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils._tracking_uri = saved_uri
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


class RunLogger:
    """Logging calls bound to one run id."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def describe(self, text: str) -> None:
        """The run's description, shown on its page in the MLflow UI (Markdown)."""
        self.client.set_tag(self.run_id, NOTE_TAG, text)

    def log_checks(self, stage: str, checks: list[Check]) -> dict[str, str]:
        """`<stage>/checks.json` and a `verdict/<group>` tag per verdict group; the verdicts."""
        self.log_rows([c.as_dict() for c in checks], f"{stage}/{CHECKS}")
        found = verdicts(checks)
        self.set_tags({verdict_tag(group): status for group, status in found.items()})
        return found

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(obj, indent=2, default=str), artifact_file)

    def log_table(self, data: dict[str, list[Any]], artifact_file: str) -> None:
        """Columns of equal length, shown as a table in the MLflow UI."""
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Log a matplotlib figure and close it (MLflow only saves it; open figures pile up)."""
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(self.run_id, figure, artifact_file)
        finally:
            plt.close(figure)

    def log_rows(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """A list of same-keyed records as an MLflow table."""
        self.log_table({key: [r[key] for r in rows] for key in rows[0]}, artifact_file)

    def log_summary(self, stage: str, summary: dict[str, Any]) -> None:
        """The stage's small result, which the report reads back."""
        self.log_dict(summary, f"{stage}/{SUMMARY}")

    def log_dataset(self, *, name: str, digest: str, source: str, profile: dict[str, Any], context: str) -> None:
        """A dataset input of this run: name, content digest, source and a small profile."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Dataset as DatasetEntity
        from mlflow.entities import DatasetInput, InputTag

        if source == "cifar10" or source.startswith("cifar10:"):
            src = HTTPDatasetSource("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
        else:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local
                warnings.simplefilter("ignore", UserWarning)
                src = resolve_dataset_source(str(Path(source).resolve()))
        dataset = MetaDataset(src, name=name, digest=digest[:36])
        base = dataset._to_mlflow_entity()
        entity = DatasetEntity(
            name=base.name,
            digest=base.digest,
            source_type=base.source_type,
            source=base.source,
            schema=base.schema,
            profile=json.dumps(profile),
        )
        self.client.log_inputs(self.run_id, [DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])

    def log_onnx_model(
        self,
        path: str | Path,
        *,
        example_in: Any,
        example_out: dict[str, Any],
        uri: str,
        providers: list[str],
        name: str = "onnx_model",
    ) -> str:
        """Log an ONNX file as MLflow model `name` of this run, whose signature is inferred from
        one example batch (input array -> named outputs); returns its model URI."""
        import mlflow
        import onnx
        from mlflow.models import infer_signature

        model = onnx.load(str(path))
        with _fluent_tracking_uri(uri), mlflow.start_run(run_id=self.run_id):
            info = mlflow.onnx.log_model(
                model,
                name=name,
                input_example=example_in,
                signature=infer_signature(example_in, example_out),
                onnx_execution_providers=providers,
                # the flavour's own pins (onnx, onnxruntime): what MLflow's inference falls back
                # to for an ONNX file anyway, without its 4 s subprocess per run
                pip_requirements=mlflow.onnx.get_default_pip_requirements(),
            )
        self.client.update_run(self.run_id, status="RUNNING")  # the with-block marked it FINISHED
        return info.model_uri
