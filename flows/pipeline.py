"""The audit pipeline: ingest -> train -> evaluate -> fairness -> transparency -> privacy -> export ->
benchmark -> release -> report.

Parameters are plain strings so the same flow runs from the CLI, `flow.serve` and a
`prefect.yaml` deployment. The configuration is validated before any stage starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import flow

from auditflow.audits.decision import Decision
from auditflow.core.config import DataConfig, PipelineConfig, PrivacyConfig, TrainConfig, load_config
from auditflow.core.paths import cache_dir
from auditflow.core.predictions import Predictions
from auditflow.core.tracking import TrackingRef
from auditflow.flows.runners import check_shared_disk, task_runner
from auditflow.models.references import References, decide_tier, plan_for
from auditflow.tasks.audit import VerdictResult, fairness_audit, privacy_audit
from auditflow.tasks.evaluate import EvaluateResult, evaluate_model
from auditflow.tasks.export import ExportResult, benchmark_model, export_model
from auditflow.tasks.ingest import IngestResult, ingest_data
from auditflow.tasks.references import train_reference_model
from auditflow.tasks.release import ReleaseResult, release
from auditflow.tasks.report import ReportResult, report_run
from auditflow.tasks.run import close_run, end_tracking_runs, open_run
from auditflow.tasks.train import TrainResult, train_model
from auditflow.tasks.transparency import transparency_audit


@dataclass(frozen=True)
class PipelineResult:
    run_id: str
    tracking_uri: str
    experiment_id: str
    test_accuracy: float  # with test-time augmentation when the profile uses it
    test_accuracy_no_tta: float  # the shipped ONNX model's
    learning: str  # "pass" or "fail": test accuracy above chance
    learning_message: str
    fairness: str  # verdict/fairness: pass | fail | inconclusive (on intervals)
    worst_class_recall: float
    transparency: str  # verdict/transparency: the shortcut check (fail: a class owes its recall to a small window)
    shortcut_classes: int  # classes flagged by it
    privacy: str  # verdict/privacy: pass | fail | inconclusive (on the strongest attack's interval)
    privacy_attack: str  # the strongest attack run: loss, rmia or lira
    privacy_tpr: float  # its TPR at privacy.verdict_fpr (nan when not stated)
    privacy_tier: str  # "reference" (RMIA/LiRA ran) or "loss" (the loss attack alone)
    release: str  # the release gate: pass (now `champion`) or fail (the version is tagged and described rejected)
    model_version: str  # the run's version in the MLflow Model Registry
    onnx_path: str
    report_html: str
    report_markdown: str
    report_pdf: str | None  # None where no PDF could be made
    overall: str  # verdict/overall: pass | fail | inconclusive
    run_url: str  # the parent run in the MLflow UI
    decision: Decision | None = None  # the report's first lines: outcome, reasons, next steps

    @classmethod
    def of(
        cls,
        ref: TrackingRef,
        evaluated: EvaluateResult,
        fairness: VerdictResult,
        transparency: VerdictResult,
        privacy: VerdictResult,
        references: References,
        released: ReleaseResult,
        exported: ExportResult,
        report: ReportResult,
    ) -> PipelineResult:
        """The flow's result from what the stages returned."""
        return cls(
            run_id=ref.run_id,
            tracking_uri=ref.uri,
            experiment_id=ref.experiment_id,
            test_accuracy=evaluated.accuracy,
            test_accuracy_no_tta=evaluated.accuracy_no_tta,
            learning=evaluated.learning,
            learning_message=evaluated.learning_message,
            fairness=fairness.status,
            worst_class_recall=fairness.headline,
            transparency=transparency.status,
            shortcut_classes=int(transparency.headline),
            privacy=privacy.status,
            privacy_attack=privacy.attack,
            privacy_tpr=privacy.headline,
            privacy_tier=references.decision.tier,
            release=released.verdict,
            model_version=f"{released.model_name} v{released.version}",
            onnx_path=exported.onnx_path,
            report_html=report.html,
            report_markdown=report.markdown,
            report_pdf=report.pdf,
            overall=report.overall,
            run_url=report.run_url,
            decision=report.decision,
        )


# Not validated: its arguments are typed objects the pipeline has just built, and validation would
# resolve the string annotations against the module's globals, which `auditflow serve` does not
# ship (Prefect 3.9 runs served flows from a cloudpickle bundle that pickles this package by
# value, with only the globals the code itself names): every served run failed here.
@flow(name="reference-models", validate_parameters=False)
def reference_models(
    predictions: str,
    snapshot: str,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    epochs: int,
    target_train_s: float,
    target_images: int,
    split_images: int,
    cfg: PrivacyConfig,
    workdir: str,
) -> References:
    """Train the reference models of the privacy audit (or take them from the cache), as
    parallel tasks on the flow's task runner, unless the budget rules them out.

    `target_images` is what the target trained on (for the time estimate); `split_images` the
    whole training split, which the plan indexes (more than the former when canaries were held out)."""
    start = time.perf_counter()
    audit = Predictions.load(predictions).audit
    plan = plan_for(
        audit, split_images, snapshot_path=snapshot, data_cfg=data_cfg, train_cfg=train_cfg, epochs=epochs, cfg=cfg
    )
    decision = decide_tier(plan, cfg, workdir=workdir, target_train_s=target_train_s, target_images=target_images)
    if decision.tier != "reference":
        return References(decision, (), time.perf_counter() - start, plan.member_in[:0], plan.nonmember_in[:0])
    futures = [
        train_reference_model.submit(i, predictions, snapshot, data_cfg, train_cfg, epochs, cfg, workdir)
        for i in range(cfg.references)
    ]
    outcomes = tuple(f.result() for f in futures)
    return References(decision, outcomes, time.perf_counter() - start, plan.member_in, plan.nonmember_in)


# the hooks end the MLflow runs KILLED when the process is interrupted or the run cancelled
@flow(name="auditflow-pipeline", on_crashed=[end_tracking_runs], on_cancellation=[end_tracking_runs])
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
        snap = ingest_data(ref, data, cfg.data, workdir, cfg.card, cfg.fairness, cfg.privacy)
        if cfg.privacy.reference_runner == "dask":  # before training: the workers must see these files
            check_shared_disk(cfg.privacy.dask_address or "", [snap.snapshot, str(cache_dir(workdir))])
        trained = train_model(
            ref, snap.snapshot, data_cfg=cfg.data, cfg=cfg.train, workdir=workdir, privacy_cfg=cfg.privacy
        )
        evaluated = evaluate_model(
            ref,
            trained,
            snap.snapshot,
            data_cfg=cfg.data,
            cfg=cfg.evaluate,
            train_cfg=cfg.train,
            privacy_cfg=cfg.privacy,
            workdir=workdir,
        )
        fairness = fairness_audit(ref, evaluated.predictions, snap.snapshot, cfg.data, snap.classes, cfg.fairness)
        transparency = transparency_audit(
            ref,
            trained.checkpoint,
            evaluated.predictions,
            snap.snapshot,
            cfg.data,
            snap.classes,
            cfg.transparency,
            trained.train_seconds,
        )
        references, privacy = _privacy(ref, cfg, snap, trained, evaluated, workdir)
        exported = _export(ref, cfg, snap, trained, evaluated, fairness, workdir)
        released = release(ref, cfg.release)
        report = report_run(ref, workdir)
    except BaseException as err:
        close_run(ref, err)
        raise
    close_run(ref)
    return PipelineResult.of(ref, evaluated, fairness, transparency, privacy, references, released, exported, report)


def _privacy(
    ref: TrackingRef,
    cfg: PipelineConfig,
    snap: IngestResult,
    trained: TrainResult,
    evaluated: EvaluateResult,
    workdir: str,
) -> tuple[References, VerdictResult]:
    """The reference models (a subflow: its task runner may be a Dask cluster), then the privacy
    audit. Returns (References, the audit's result)."""
    # one model at a time here (two trainings would share the same cores); Dask spreads them
    runner = task_runner(1, cfg.privacy.dask_address if cfg.privacy.reference_runner == "dask" else None)
    references = reference_models.with_options(task_runner=runner)(
        evaluated.predictions,
        snap.snapshot,
        cfg.data,
        cfg.train,
        trained.epochs,
        trained.train_seconds,
        trained.images,
        trained.split_images,
        cfg.privacy,
        workdir,
    )
    privacy = privacy_audit(
        ref,
        evaluated.predictions,
        references,
        trained.train_seconds,
        snap.classes,
        cfg.privacy,
        cfg.fairness,
        trained.dp_epsilon,
        trained.dp_delta,
    )
    return references, privacy


def _export(
    ref: TrackingRef,
    cfg: PipelineConfig,
    snap: IngestResult,
    trained: TrainResult,
    evaluated: EvaluateResult,
    fairness: VerdictResult,
    workdir: str,
) -> ExportResult:
    """The ONNX files (with the calibrated output and, when the fairness stage asked, the
    logit-adjusted file), then the inference benchmark of the shipped one. Returns the export's result."""
    exported = export_model(
        ref,
        trained.checkpoint,
        snap.snapshot,
        cfg.data,
        cfg.export,
        workdir,
        eval_cfg=cfg.evaluate,
        temperature=evaluated.temperature,
        fitted_on=evaluated.temperature_fitted_on,
        adjusted_offsets=fairness.offsets,
        max_adjusted_drop=cfg.fairness.mitigation_max_accuracy_drop,
    )
    benchmark_model(ref, trained.checkpoint, exported.onnx_path, snap.snapshot, cfg.benchmark)
    return exported
