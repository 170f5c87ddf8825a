"""Stages 4 and 5: the fairness audit and the privacy audit, as thin Prefect tasks.

Both audit the model as it ships: the logits `evaluate` saved without test-time augmentation
(`Predictions`). The computation, the checks and their thresholds are the pure stage functions
`auditflow.audits.fairness_stage.fairness_stage` and `auditflow.audits.privacy_stage.privacy_stage`;
a task opens the inputs, calls its stage and publishes the report (`Tracker.publish`: metrics,
checks and verdicts, tables, figures, summary; the headline and verdicts on the parent run).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits import fairness_stage as fairness
from auditflow.audits import privacy_stage as privacy
from auditflow.core.config import DataConfig, FairnessConfig, PrivacyConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.names import Stage
from auditflow.core.predictions import Predictions
from auditflow.core.tracking import Tracker, TrackingRef
from auditflow.models.references import References, reference_logits


@dataclass(frozen=True)
class VerdictResult:
    status: str  # pass | fail | inconclusive, decided on intervals
    reasons: tuple[str, ...]  # why it is not a pass, one sentence each
    headline: float  # worst-class recall (fairness) or the strongest attack's TPR at the verdict FPR (privacy)
    attack: str = ""  # privacy: the strongest attack
    offsets: tuple[float, ...] | None = None  # fairness: logit offsets for `model.adjusted.onnx`, when worth it


def _verdict(outcome: fairness.AuditOutcome, offsets: tuple[float, ...] | None = None) -> VerdictResult:
    return VerdictResult(outcome.status, outcome.reasons, outcome.headline, outcome.attack, offsets)


@task(name="fairness-audit", cache_policy=NO_CACHE)
def fairness_audit(
    ref: TrackingRef,
    predictions: str,
    snapshot_path: str,
    data_cfg: DataConfig,
    classes: tuple[str, ...],
    cfg: FairnessConfig,
) -> VerdictResult:
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, Stage.FAIRNESS, fairness.DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("validation", "test"))
        splits = make_splits(Snapshot.open(snapshot_path), data_cfg)
        attributes, source = fairness.subgroup_attributes(splits.test_x, splits.test_paths, cfg)
        outcome = fairness.fairness_stage(
            Predictions.load(predictions), attributes=attributes, attribute_source=source, classes=classes, cfg=cfg
        )
        tracker.publish(ref, run, outcome.report)
    return _verdict(outcome, fairness.offsets_to_export(outcome.report.summary))


def reference_inputs(refs: References, queries: int) -> privacy.ReferenceInputs:
    """What the privacy stage needs of the reference models, their cached logits read."""
    return privacy.ReferenceInputs(
        tier=refs.decision.tier,
        reason=refs.decision.reason,
        logits=reference_logits(refs.outcomes, queries) if refs.decision.tier == "reference" else None,
        member_in=refs.member_in,
        nonmember_in=refs.nonmember_in,
        seconds=refs.seconds,
        models=tuple(asdict(o) for o in refs.outcomes),
    )


@task(name="privacy-audit", cache_policy=NO_CACHE)
def privacy_audit(
    ref: TrackingRef,
    predictions: str,
    refs: References,
    target_train_s: float,
    classes: tuple[str, ...],
    cfg: PrivacyConfig,
    fairness_cfg: FairnessConfig,
    dp_epsilon: float | None = None,
    dp_delta: float | None = None,
) -> VerdictResult:
    """`dp_epsilon`/`dp_delta`: what DP-SGD's accountant says the training spent (None without DP);
    the one-run canary bound is computed at that delta and shown beside that epsilon."""
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, Stage.PRIVACY, privacy.DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("train", "test"))
        outcome = privacy.privacy_stage(
            Predictions.load(predictions),
            references=reference_inputs(refs, cfg.queries),
            target_train_s=target_train_s,
            classes=classes,
            cfg=cfg,
            fairness_cfg=fairness_cfg,
            dp_epsilon=dp_epsilon,
            dp_delta=dp_delta,
        )
        tracker.publish(ref, run, outcome.report)
    return _verdict(outcome)
