"""Reference models of the privacy audit: one Prefect task per model, so a Dask task runner can
spread them over machines; each is cached by data digest, recipe and training indices.

Nothing here talks to MLflow: the privacy stage logs what the models cost and whether they
came from the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.core.config import DataConfig, PrivacyConfig, TrainConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.paths import cache_dir
from auditflow.models.evaluation.metrics import load_predictions
from auditflow.models.references import (
    ReferenceOutcome,
    ReferencePlan,
    cached,
    estimate_seconds,
    plan_references,
    reference_recipe,
    train_reference,
)
from auditflow.models.training.runtime import resolve_runtime
from auditflow.tasks.train import exclusive

ATTACK_NAMES = {"rmia": "RMIA", "lira": "LiRA"}
COMPILE_OVERHEAD_S = 45.0  # per uncached model on the CPU (torch.compile + warm-up); measured ~30-60 s


@dataclass(frozen=True)
class ReferenceDecision:
    """Which privacy tier runs and why: the reference tiers, or the loss attack alone."""

    tier: str  # "reference" or "loss"
    reason: str
    count: int  # reference models planned
    uncached: int  # of which need training in this run
    estimate_s: float  # estimated training seconds of the uncached ones


@dataclass(frozen=True)
class References:
    """The privacy tier that runs, and the reference models it uses (empty for the loss tier)."""

    decision: ReferenceDecision
    outcomes: tuple[ReferenceOutcome, ...]
    seconds: float  # wall time of the reference step, cached models included
    member_in: np.ndarray  # (R, n_members) bool: audited member i was in reference model r's training set
    nonmember_in: np.ndarray  # (R, n_nonmembers) bool


def data_key(snapshot_path: str, data_cfg: DataConfig) -> str:
    """The data a reference model sees: the snapshot's content digest and how it was split."""
    digest = Snapshot.open(snapshot_path).digest
    return hashlib.sha256(json.dumps([digest, data_cfg.model_dump(mode="json")]).encode()).hexdigest()[:20]


def plan_for(
    predictions: dict[str, np.ndarray],
    n_train: int,
    snapshot_path: str,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    epochs: int,
    cfg: PrivacyConfig,
) -> ReferencePlan:
    """The reference models of this run's audit (deterministic: computed wherever needed), from
    the evaluation's arrays (`load_predictions`) and the size of the training split."""
    return plan_references(
        n_train,
        predictions["member_index"],
        predictions["nonmember_index"],
        cfg.references,
        cfg.reference_mode,
        cfg.seed,
        data_key(snapshot_path, data_cfg),
        reference_recipe(train_cfg, epochs, train_cfg.seed),
    )


def decide_tier(
    plan: ReferencePlan, cfg: PrivacyConfig, workdir: str, target_train_s: float, target_images: int
) -> ReferenceDecision:
    """Run the reference tiers unless their uncached models would overrun `reference_budget_s`."""
    wanted = [a for a in cfg.attacks if a != "loss"]
    if not cfg.references or not wanted:
        why = "privacy.references = 0" if not cfg.references else "no reference-model attack in privacy.attacks"
        return ReferenceDecision("loss", f"loss attack only: {why}", 0, 0, 0.0)
    cache = cache_dir(workdir) / "references"
    uncached = sum(1 for s in plan.specs if not cached(cache, s))
    estimate = estimate_seconds(plan, cache, target_train_s, target_images, COMPILE_OVERHEAD_S)
    if cfg.reference_budget_s is not None and estimate > cfg.reference_budget_s:
        return ReferenceDecision(
            "loss",
            f"loss attack only: training {uncached} uncached reference model(s) would take about {estimate:.0f} s "
            f"here, over privacy.reference_budget_s = {cfg.reference_budget_s:.0f} s; profile `audit` runs "
            f"{' and '.join(ATTACK_NAMES[a] for a in wanted)}",
            cfg.references,
            uncached,
            estimate,
        )
    return ReferenceDecision(
        "reference",
        f"{' and '.join(ATTACK_NAMES[a] for a in wanted)} {cfg.reference_mode} with {cfg.references} "
        f"reference model(s) ({cfg.references - uncached} from the cache)",
        cfg.references,
        uncached,
        estimate,
    )


@task(name="reference-model", cache_policy=NO_CACHE, task_run_name="reference-model-{index}")
def train_reference_model(
    index: int,
    predictions: str,
    snapshot_path: str,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    epochs: int,
    cfg: PrivacyConfig,
    workdir: str,
) -> ReferenceOutcome:
    """Train (or fetch from the cache) reference model `index` of this run's plan."""
    data = load_predictions(predictions)
    splits = make_splits(Snapshot.open(snapshot_path), data_cfg)
    spec = plan_for(data, len(splits.train_y), snapshot_path, data_cfg, train_cfg, epochs, cfg).specs[index]
    runtime = resolve_runtime(train_cfg.device, train_cfg.precision, train_cfg.num_threads)
    cache = cache_dir(workdir) / "references"
    with exclusive(cache / (spec.key + ".lock.d")):  # two runs must not train the same model at once
        return train_reference(
            splits,
            spec,
            reference_recipe(train_cfg, epochs, train_cfg.seed),
            runtime,
            np.asarray(data["member_index"]),
            np.asarray(data["nonmember_index"]),
            cache,
            queries=cfg.queries,
        )
