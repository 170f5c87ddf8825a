"""Stage 3: checkpoint -> logits of the test split and a member sample, plus test metrics.

The logits file is the one input of the fairness and privacy audits: logits are computed
once per split.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.plots import confusion_figure
from auditflow.core.config import DataConfig, EvalConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.paths import run_dir
from auditflow.core.tracking import Tracker, TrackingRef
from auditflow.models.checkpoints import load_model
from auditflow.models.evaluation import check_learning, evaluate
from auditflow.models.inference import predict
from auditflow.models.runtime import resolve_runtime


@dataclass(frozen=True)
class EvaluateResult:
    predictions: str  # .npz with test_logits, test_labels, member_logits, member_labels
    accuracy: float  # test top-1, 0..1
    learning: str  # "pass", or "fail" when test accuracy cannot be told apart from chance
    learning_message: str


log = logging.getLogger(__name__)


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
) -> EvaluateResult:
    with Tracker(ref.uri).stage(ref, "evaluate") as run:
        runtime = resolve_runtime(device, "fp32")  # the precision of the exported model
        model, _ = load_model(checkpoint, runtime.device)
        model = runtime.prepare(model)
        splits = make_splits(Snapshot.open(snapshot_path), data_cfg)
        # Members for the privacy audit: as many training images as there are test images.
        rng = np.random.default_rng(data_cfg.seed)
        members = np.sort(rng.choice(len(splits.train_y), min(len(splits.train_y), len(splits.test_y)), replace=False))
        test_logits = predict(model, splits.test_x, runtime, cfg.batch_size, tta=tta, translate=tta_translate)
        member_logits = predict(
            model, splits.train_x[members], runtime, cfg.batch_size, tta=tta, translate=tta_translate
        )
        path = run_dir(workdir, ref.run_id) / "predictions.npz"
        np.savez_compressed(
            path,
            test_logits=test_logits,
            test_labels=splits.test_y,
            member_logits=member_logits,
            member_labels=splits.train_y[members],
            member_index=members,
        )

        result = evaluate(test_logits, splits.test_y, splits.classes, cfg.ece_bins)
        member_accuracy = float((member_logits.argmax(1) == splits.train_y[members]).mean())
        learned = check_learning(test_logits.argmax(1), splits.test_y, member_accuracy)
        if learned.verdict == "fail":
            log.warning("MODEL DID NOT LEARN: %s", learned.message)
        run.set_tags({"verdict/learning": learned.verdict})
        Tracker(ref.uri).parent(ref).set_tags({"verdict/learning": learned.verdict})
        run.log_metrics({"learning_chance_accuracy": learned.chance, "member_accuracy": member_accuracy})
        run.log_metrics(
            {
                "test_accuracy": result.accuracy,
                "test_nll": result.nll,
                "test_ece": result.ece,
                "test_macro_f1": result.macro_f1,
            }
        )
        run.log_metrics({f"recall.{c}": r for c, r in zip(result.classes, result.recall, strict=True)})
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
        run.log_artifact(path, "evaluate")
        run.log_summary(
            "evaluate",
            {
                **asdict(result),
                "macro_f1": result.macro_f1,
                "per_class": rows,
                "tta": tta,
                "tta_translate": tta_translate,
                "learning": asdict(learned),
            },
        )
    return EvaluateResult(str(path), result.accuracy, learned.verdict, learned.message)
