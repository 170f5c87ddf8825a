"""Stage 3: checkpoint -> logits of the test, validation and member splits, test metrics and calibration.

The logits file is the one input of the fairness and privacy audits: logits are computed
once per split. The test split is scored twice when the profile uses test-time augmentation:
with it (the figure the audits use today) and without it, which is the model that ships as
ONNX. The temperature is fitted on the validation split's no-TTA logits and judged on test.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.canaries import choose_canaries
from auditflow.audits.plots import confusion_figure, reliability_figure
from auditflow.audits.privacy import choose_audit_set
from auditflow.core.checks import Check, condition_text, judge
from auditflow.core.config import DataConfig, EvalConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.paths import run_dir
from auditflow.core.stats import wilson_interval
from auditflow.core.tracking import Tracker, TrackingRef, metric_key
from auditflow.models.evaluation.calibration import calibrate
from auditflow.models.evaluation.inference import audit_logits, predict, query_logits
from auditflow.models.evaluation.metrics import check_learning, evaluate
from auditflow.models.training.checkpoints import load_model
from auditflow.models.training.runtime import resolve_runtime

DESCRIPTION = (
    "Evaluate: test accuracy with and without test-time augmentation (the shipped ONNX model has none), "
    "per-class precision/recall/F1, confusion matrix, calibration (ECE, reliability diagram, temperature "
    "fitted on the validation split), the learning check. Logits are saved for the audits."
)
INTERVAL = 0.95  # two-sided level of the accuracy intervals shown on the card


@dataclass(frozen=True)
class EvaluateResult:
    # .npz: test_logits(_no_tta), test_labels, val_logits, val_labels; the privacy audit's points:
    # member_logits/_labels/_index (training split, no TTA) and nonmember_index (into the test split),
    # nonmember_wanted (per class, non-members drawn before rare classes were matched down);
    # with privacy.queries > 1 member_/nonmember_query_logits (queries x n x K); with canaries
    # canary_index/_included/_labels/_logits (the one-run audit's, scored apart)
    predictions: str
    accuracy: float  # test top-1 as configured (with TTA when the profile uses it), 0..1
    accuracy_no_tta: float  # test top-1 of the shipped model (no TTA), 0..1
    learning: str  # "pass", or "fail" when test accuracy cannot be told apart from chance
    learning_message: str


log = logging.getLogger(__name__)


def _interval_metrics(name: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    low, high = wilson_interval(int((preds == labels).sum()), len(labels), INTERVAL)
    return {f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)}


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(
    ref: TrackingRef,
    checkpoint: str,
    snapshot_path: str,
    data_cfg: DataConfig,
    cfg: EvalConfig,
    tta: bool,
    tta_translate: int,
    device: str,
    workdir: str,
    audit_samples: int,
    audit_seed: int,
    audit_queries: int = 1,
    canaries: int = 0,
) -> EvaluateResult:
    """`canaries`: the one-run audit's count, drawn with `audit_seed` as the train stage drew them."""
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "evaluate", DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("train", "validation", "test"))
        runtime = resolve_runtime(device, "fp32")  # the precision of the exported model
        model, _ = load_model(checkpoint, runtime.device)
        model = runtime.prepare(model)
        splits = make_splits(Snapshot.open(snapshot_path), data_cfg)
        # The privacy audit's points: test non-members and training members with the same class
        # counts, scored by the model as it ships (no TTA).
        # canaries (the one-run audit) are scored apart: an excluded one was never trained on
        chosen = choose_canaries(len(splits.train_y), canaries, audit_seed)
        audit_set = choose_audit_set(splits.train_y, splits.test_y, audit_samples, audit_seed, exclude=chosen.index)
        members, nonmembers = audit_set.members, audit_set.nonmembers
        for cls, (drawn, kept) in audit_set.matched_down.items():
            log.info(
                "privacy audit: class %r has %d training images for %d drawn non-members: %d on each side",
                splits.classes[cls],
                kept,
                drawn,
                kept,
            )
        test_logits = predict(model, splits.test_x, runtime, cfg.batch_size, tta=tta, translate=tta_translate)
        shipped_logits = predict(model, splits.test_x, runtime, cfg.batch_size) if tta else test_logits
        val_logits = predict(model, splits.val_x, runtime, cfg.batch_size)
        if audit_queries > 1:  # the membership audit's augmented views (query 0 is the plain image)
            log.info(
                "scoring %d audited images under %d views for the privacy audit",
                len(members) + len(nonmembers),
                audit_queries,
            )
        member_logits, member_views = audit_logits(
            model, splits.train_x[members], runtime, audit_queries, cfg.batch_size
        )
        audit_arrays = {}
        if member_views is not None:
            audit_arrays = {
                "member_query_logits": member_views,
                "nonmember_query_logits": query_logits(
                    model, splits.test_x[nonmembers], runtime, audit_queries, cfg.batch_size
                ),
            }
        if canaries:
            audit_arrays |= {
                "canary_index": chosen.index,
                "canary_included": chosen.included,
                "canary_labels": splits.train_y[chosen.index],
                "canary_logits": predict(model, splits.train_x[chosen.index], runtime, cfg.batch_size),
            }
        path = run_dir(workdir, ref.run_id) / "predictions.npz"
        np.savez_compressed(
            path,
            **audit_arrays,
            test_logits=test_logits,
            test_logits_no_tta=shipped_logits,
            test_labels=splits.test_y,
            val_logits=val_logits,
            val_labels=splits.val_y,
            member_logits=member_logits,
            member_labels=splits.train_y[members],
            member_index=members,
            nonmember_index=nonmembers,
            nonmember_wanted=audit_set.wanted,
        )

        result = evaluate(test_logits, splits.test_y, splits.classes, cfg.ece_bins)
        shipped = evaluate(shipped_logits, splits.test_y, splits.classes, cfg.ece_bins)
        calibration = calibrate(val_logits, splits.val_y, shipped_logits, splits.test_y, cfg.ece_bins)
        member_accuracy = float((member_logits.argmax(1) == splits.train_y[members]).mean())
        learned = check_learning(shipped_logits.argmax(1), splits.test_y, member_accuracy)  # what users get
        if learned.verdict == "fail":
            log.warning("MODEL DID NOT LEARN: %s", learned.message)

        headline = {
            "evaluate/test_accuracy": result.accuracy,
            "evaluate/test_accuracy_no_tta": shipped.accuracy,
            "evaluate/test_ece_no_tta": calibration.ece_before,
            "evaluate/test_ece_calibrated": calibration.ece_after,
            "evaluate/temperature": calibration.temperature,
        }
        run.log_metrics(
            headline
            | _interval_metrics("evaluate/test_accuracy", test_logits.argmax(1), splits.test_y)
            | _interval_metrics("evaluate/test_accuracy_no_tta", shipped_logits.argmax(1), splits.test_y)
            | {
                "evaluate/test_nll": result.nll,
                "evaluate/test_ece": result.ece,
                "evaluate/test_macro_f1": result.macro_f1,
                "evaluate/test_macro_f1_no_tta": shipped.macro_f1,
                "evaluate/test_nll_no_tta": calibration.nll_before,
                "evaluate/test_nll_calibrated": calibration.nll_after,
                "evaluate/temperature_fit_images": calibration.n_fit,
                "evaluate/member_accuracy": member_accuracy,
                "evaluate/chance_accuracy": learned.chance,
                "evaluate/test_accuracy_ci99_low": learned.interval[0],
                "evaluate/test_images": len(splits.test_y),
            }
        )
        per_class = {
            metric_key("evaluate", name, "class", c): v
            for name, values in (("recall", result.recall), ("precision", result.precision), ("f1", result.f1))
            for c, v in zip(result.classes, values, strict=True)
        }
        run.log_metrics(per_class)
        rows = result.per_class_rows()
        run.log_rows(rows, "evaluate/per_class.json")
        cm = np.asarray(result.confusion)
        np.savetxt(
            run_dir(workdir, ref.run_id) / "confusion_matrix.csv",
            cm,
            fmt="%d",
            delimiter=",",
            header=",".join(result.classes),
            comments="",
        )
        run.log_artifact(run_dir(workdir, ref.run_id) / "confusion_matrix.csv", "evaluate")
        run.log_figure(confusion_figure(result.confusion, result.classes), "evaluate/confusion_matrix.png")
        run.log_figure(
            reliability_figure(asdict(calibration.before), asdict(calibration.after), calibration.temperature),
            "evaluate/reliability.png",
        )
        run.log_dict(
            {"temperature": calibration.temperature, "apply": "softmax(logits / temperature)"},
            "evaluate/temperature.json",
        )
        run.log_artifact(path, "evaluate")
        checks = [
            Check(
                key="learning/above_chance",
                verdict="learning",
                title="Model learned (held-out accuracy above chance)",
                condition="99% Wilson lower bound of test accuracy > chance accuracy (majority-class share)",
                stage="evaluate",
                metric="evaluate/test_accuracy_ci99_low",
                value=learned.interval[0],
                threshold=learned.chance,
                status=learned.verdict,
                evidence="#evaluation",
                note=learned.message,
            ),
            Check(
                key="calibration/ece",
                verdict="calibration",
                title="Calibration of the shipped model",
                condition=condition_text("test ECE after temperature scaling", cfg.max_ece, False, cfg.warn_ece, ".3f"),
                stage="evaluate",
                metric="evaluate/test_ece_calibrated",
                value=calibration.ece_after,
                threshold=cfg.max_ece,
                warn_threshold=cfg.warn_ece,
                status=judge(calibration.ece_after, cfg.max_ece, False, cfg.warn_ece),
                evidence="#calibration",
                note=f"ECE {calibration.ece_before:.3f} before, {calibration.ece_after:.3f} after T = "
                f"{calibration.temperature:.3f} ({calibration.fitted_on})",
            ),
        ]
        tracker.publish_checks(ref, run, "evaluate", checks, headline)
        run.log_summary(
            "evaluate",
            {
                **asdict(result),
                "macro_f1": result.macro_f1,
                "per_class": rows,
                "tta": tta,
                "tta_translate": tta_translate,
                "accuracy_no_tta": shipped.accuracy,
                "learning": asdict(learned),
                "calibration": asdict(calibration),
                "max_ece": cfg.max_ece,
                "warn_ece": cfg.warn_ece,
            },
        )
    return EvaluateResult(str(path), result.accuracy, shipped.accuracy, learned.verdict, learned.message)
