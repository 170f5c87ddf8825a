"""The audit pipeline: ingest -> train -> evaluate -> fairness -> privacy -> export -> benchmark -> report.

Parameters are plain strings so the same flow runs from the CLI, `flow.serve` and a
`prefect.yaml` deployment. The configuration is validated before any stage starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from auditflow.core.config import load_config
from auditflow.tasks.audit import fairness_audit, privacy_audit
from auditflow.tasks.evaluate import evaluate_model
from auditflow.tasks.export import benchmark_model, export_model
from auditflow.tasks.ingest import ingest_data
from auditflow.tasks.report import report_run
from auditflow.tasks.run import close_run, open_run
from auditflow.tasks.train import train_model


@dataclass(frozen=True)
class PipelineResult:
    run_id: str
    tracking_uri: str
    experiment_id: str
    test_accuracy: float  # with test-time augmentation when the profile uses it
    test_accuracy_no_tta: float  # the shipped ONNX model's
    learning: str  # "pass" or "fail": test accuracy above chance
    learning_message: str
    fairness_passed: bool
    privacy_passed: bool
    attack_auc: float
    worst_class_recall: float
    onnx_path: str
    report_html: str
    report_markdown: str
    report_pdf: str | None  # None where no PDF could be made
    overall: str  # verdict/overall: pass | fail | inconclusive
    run_url: str  # the parent run in the MLflow UI


@flow(name="auditflow-pipeline")
def audit_pipeline(
    profile: str = "quick",
    data: str = "cifar10",
    overrides: list[str] | None = None,
    workdir: str = ".",
    run_name: str | None = None,
) -> PipelineResult:
    """Run every stage on `data` with profile `profile` plus `section.field=value` overrides."""
    cfg = load_config(profile, overrides or [])
    ref = open_run(cfg, data, workdir, run_name)
    try:
        snap = ingest_data(ref, data, cfg.data, workdir, cfg.card)
        trained = train_model(ref, snap.snapshot, cfg.data, cfg.train, workdir)
        evaluated = evaluate_model(
            ref,
            trained.checkpoint,
            snap.snapshot,
            cfg.data,
            cfg.evaluate,
            cfg.train.tta,
            cfg.train.tta_translate,
            cfg.train.device,
            workdir,
        )
        fairness = fairness_audit(ref, evaluated.predictions, snap.classes, cfg.fairness)
        privacy = privacy_audit(ref, evaluated.predictions, snap.classes, cfg.privacy)
        exported = export_model(ref, trained.checkpoint, snap.snapshot, cfg.data, cfg.export, workdir)
        benchmark_model(ref, trained.checkpoint, exported.onnx_path, snap.snapshot, cfg.benchmark)
        report = report_run(ref, workdir)
    except BaseException as err:
        close_run(ref, err)
        raise
    close_run(ref)
    return PipelineResult(
        run_id=ref.run_id,
        tracking_uri=ref.uri,
        experiment_id=ref.experiment_id,
        test_accuracy=evaluated.accuracy,
        test_accuracy_no_tta=evaluated.accuracy_no_tta,
        learning=evaluated.learning,
        learning_message=evaluated.learning_message,
        fairness_passed=fairness.passed,
        privacy_passed=privacy.passed,
        attack_auc=privacy.headline,
        worst_class_recall=fairness.headline,
        onnx_path=exported.onnx_path,
        report_html=report.html,
        report_markdown=report.markdown,
        report_pdf=report.pdf,
        overall=report.overall,
        run_url=report.run_url,
    )
