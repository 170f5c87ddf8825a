"""Reference models for the membership-inference attacks (RMIA, LiRA): plan, train, cache.

A reference model is trained with the target's recipe (same `fit`, same architecture,
schedule and epoch count; another seed) on a random half of a population pool. It never
depends on the target's weights, so it is cached by (data digest, recipe, training indices)
and a scheduled rerun on the same data and recipe reuses it instead of training again.

Pools, in terms of the audited points (members from the training split, non-members from the
test split, chosen by `auditflow.audits.privacy.choose_audit_set`):
- offline: the pool is the training split minus the audited members, so no reference model
  saw any audited point (RMIA offline, LiRA offline);
- online: the pool also holds every audited point, so each reference model saw a random half
  of them (RMIA online, LiRA online with IN and OUT models).

Planning (`plan_for`, `decide_tier`) is deterministic and computed wherever it is needed (the
flow and each reference-model task); the Prefect tasks in `auditflow.tasks.references` only
train, and the privacy audit reads the cached logits through `reference_logits`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from auditflow.core.config import DataConfig, PrivacyConfig, TrainConfig
from auditflow.core.data import Snapshot, Splits
from auditflow.core.paths import cache_dir
from auditflow.core.predictions import AuditPoints
from auditflow.models.evaluation.inference import audit_logits, query_logits
from auditflow.models.training.checkpoints import load_model
from auditflow.models.training.fit import fit
from auditflow.models.training.runtime import Runtime

log = logging.getLogger(__name__)

LOGITS_FILE = "logits.npz"
META_FILE = "reference.json"
ATTACK_NAMES = {"rmia": "RMIA", "lira": "LiRA"}
COMPILE_OVERHEAD_S = 45.0  # per uncached model on the CPU (torch.compile + warm-up); measured ~30-60 s


@dataclass(frozen=True)
class ReferenceSpec:
    """One reference model: which images it trains on and where its results are cached."""

    index: int  # 0-based position among the run's reference models
    seed: int  # training seed (initialisation, shuffling, augmentation)
    train_index: tuple[int, ...]  # into the run's training split
    test_index: tuple[int, ...]  # into the test split (online mode: audited non-members it trains on)
    key: str  # cache folder name: digest of data, recipe and the indices above


@dataclass(frozen=True)
class ReferencePlan:
    """The reference models of one audit and which audited point each one saw."""

    mode: Literal["offline", "online"]
    specs: tuple[ReferenceSpec, ...]
    member_in: np.ndarray  # (R, n_members) bool: audited member i is in model r's training set
    nonmember_in: np.ndarray  # (R, n_nonmembers) bool


@dataclass(frozen=True)
class ReferenceOutcome:
    """What one reference model gives the attacks (read back from its cache folder)."""

    key: str
    logits: str  # .npz: member_logits, nonmember_logits (no TTA, like the deployed model)
    cached: bool  # True when no training happened in this run
    train_seconds: float  # training passes of the run that trained it
    wall_seconds: float  # spent in this run (0-ish when cached)
    epochs: int
    images: int  # training images
    query_logits: str | None = None  # .npz: member_/nonmember_query_logits (queries x n x K); None for 1 query
    worker: str = ""  # the Dask worker that trained or fetched it ("" in this process)


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


def reference_recipe(target: TrainConfig, epochs: int, seed: int) -> TrainConfig:
    """The target's recipe with its epoch count fixed (no time budget: the reference must not
    train longer because its half of the data makes epochs cheaper) and its own seed."""
    return target.model_copy(update={"epochs": epochs, "time_budget_s": None, "seed": seed, "target_accuracy": None})


def _digest(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def plan_references(
    n_train: int,
    members: np.ndarray,
    nonmembers: np.ndarray,
    *,
    count: int,
    mode: Literal["offline", "online"],
    seed: int,
    data_digest: str,
    recipe: TrainConfig,
) -> ReferencePlan:
    """Draw each reference model's half of the pool (seeded) and name its cache entry.

    `members` index the training split, `nonmembers` the test split (the audited points).
    `recipe` is the target's recipe with the resolved epoch count (`reference_recipe` is
    applied per model with seed `seed * 1000 + r`).
    """
    members, nonmembers = np.asarray(members), np.asarray(nonmembers)
    others = np.setdiff1d(np.arange(n_train), members)
    n_audit = len(members) + len(nonmembers)
    # online: every audited point is IN for exactly half of the models (LiRA's own design:
    # with independent coin flips, some points would have no IN or no OUT model at all)
    audit_in = (
        np.argsort(np.random.default_rng([seed, 11]).random((count, n_audit)), axis=0) < count // 2
        if mode == "online"
        else np.zeros((count, n_audit), dtype=bool)
    )
    specs, member_in, nonmember_in = [], [], []
    for r in range(count):
        rng = np.random.default_rng([seed, r, 7])
        take_train = np.sort(
            np.concatenate([others[rng.random(len(others)) < 0.5], members[audit_in[r, : len(members)]]])
        )
        take_test = np.sort(nonmembers[audit_in[r, len(members) :]])
        model_seed = seed * 1000 + r
        key = _digest(
            data_digest,
            reference_recipe(recipe, recipe.epochs, model_seed).model_dump(mode="json"),
            hashlib.sha256(take_train.astype(np.int64).tobytes()).hexdigest(),
            hashlib.sha256(take_test.astype(np.int64).tobytes()).hexdigest(),
            # the audited points it is scored on: the logits cached with it
            hashlib.sha256(np.concatenate([members, -1 - nonmembers]).astype(np.int64).tobytes()).hexdigest(),
        )
        specs.append(ReferenceSpec(r, model_seed, tuple(take_train.tolist()), tuple(take_test.tolist()), key))
        member_in.append(audit_in[r, : len(members)])
        nonmember_in.append(audit_in[r, len(members) :])
    shape = (count, 0)
    return ReferencePlan(
        mode=mode,
        specs=tuple(specs),
        member_in=np.asarray(member_in, dtype=bool).reshape(count, len(members)) if count else np.zeros(shape, bool),
        nonmember_in=np.asarray(nonmember_in, dtype=bool).reshape(count, len(nonmembers))
        if count
        else np.zeros(shape, bool),
    )


def cached(cache: Path, spec: ReferenceSpec) -> bool:
    """Whether `spec`'s logits are already in `cache` (complete entries only: written last)."""
    return (cache / spec.key / META_FILE).is_file()


def estimate_seconds(
    plan: ReferencePlan, cache: Path, *, target_train_seconds: float, target_images: int, overhead_seconds: float
) -> float:
    """Seconds the uncached reference models would take to train: the target's training time
    scaled by each one's share of images, plus a fixed overhead (compile, warm-up) each."""
    todo = [s for s in plan.specs if not cached(cache, s)]
    per_image = target_train_seconds / max(target_images, 1)
    return sum(per_image * (len(s.train_index) + len(s.test_index)) + overhead_seconds for s in todo)


def data_key(snapshot_path: str, data_cfg: DataConfig) -> str:
    """The data a reference model sees: the snapshot's content digest and how it was split."""
    digest = Snapshot.open(snapshot_path).digest
    return hashlib.sha256(json.dumps([digest, data_cfg.model_dump(mode="json")]).encode()).hexdigest()[:20]


def plan_for(
    audit: AuditPoints,
    n_train: int,
    *,
    snapshot_path: str,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    epochs: int,
    cfg: PrivacyConfig,
) -> ReferencePlan:
    """The reference models of this run's audit (deterministic: computed wherever needed), from
    the audited points (`Predictions.audit`) and the size of the training split."""
    return plan_references(
        n_train,
        audit.member_index,
        audit.nonmember_index,
        count=cfg.references,
        mode=cfg.reference_mode,
        seed=cfg.seed,
        data_digest=data_key(snapshot_path, data_cfg),
        recipe=reference_recipe(train_cfg, epochs, train_cfg.seed),
    )


def decide_tier(
    plan: ReferencePlan, cfg: PrivacyConfig, *, workdir: str, target_train_s: float, target_images: int
) -> ReferenceDecision:
    """Run the reference tiers unless their uncached models would overrun `reference_budget_s`."""
    wanted = [a for a in cfg.attacks if a != "loss"]
    if not cfg.references or not wanted:
        why = "privacy.references = 0" if not cfg.references else "no reference-model attack in privacy.attacks"
        return ReferenceDecision("loss", f"loss attack only: {why}", 0, 0, 0.0)
    cache = cache_dir(workdir) / "references"
    uncached = sum(1 for s in plan.specs if not cached(cache, s))
    estimate = estimate_seconds(
        plan,
        cache,
        target_train_seconds=target_train_s,
        target_images=target_images,
        overhead_seconds=COMPILE_OVERHEAD_S,
    )
    attacks = " and ".join(ATTACK_NAMES[a] for a in wanted)
    if cfg.reference_budget_s is not None and estimate > cfg.reference_budget_s:
        return ReferenceDecision(
            "loss",
            f"loss attack only: training {uncached} uncached reference model(s) would take about {estimate:.0f} s "
            f"here, over privacy.reference_budget_s = {cfg.reference_budget_s:.0f} s; profile `audit` runs {attacks}",
            cfg.references,
            uncached,
            estimate,
        )
    return ReferenceDecision(
        "reference",
        f"{attacks} {cfg.reference_mode} with {cfg.references} reference model(s) "
        f"({cfg.references - uncached} from the cache)",
        cfg.references,
        uncached,
        estimate,
    )


def reference_logits(outcomes: tuple[ReferenceOutcome, ...], queries: int) -> np.ndarray:
    """The reference models' logits of the audited points, (queries, R, n, K), members first,
    read from their cache entries (`queries` > 1: the augmented views cached beside them)."""
    return np.stack([_one_reference_logits(o, queries) for o in outcomes], axis=1)


def _one_reference_logits(outcome: ReferenceOutcome, queries: int) -> np.ndarray:
    """One reference model's logits of the audited points, (queries, n, K), members first."""
    if queries == 1:
        with np.load(outcome.logits) as stored:
            return np.concatenate([stored["member_logits"], stored["nonmember_logits"]])[None]
    if outcome.query_logits is None:
        raise ValueError(f"reference model {outcome.key} has no logits for {queries} queries")
    with np.load(outcome.query_logits) as stored:
        return np.concatenate([stored["member_query_logits"], stored["nonmember_query_logits"]], axis=1)


def train_reference(
    splits: Splits,
    spec: ReferenceSpec,
    recipe: TrainConfig,
    *,
    runtime: Runtime,
    members: np.ndarray,
    nonmembers: np.ndarray,
    cache: Path,
    batch_size: int = 1000,
    queries: int = 1,
) -> ReferenceOutcome:
    """Train reference model `spec` (unless cached) and score the audited points with it, under
    `queries` augmented views as well when queries > 1 (cached beside the model, per query count).

    Its training set is `splits.train_*[spec.train_index]` plus `splits.test_*[spec.test_index]`;
    it validates on the target's validation split, as the target did.
    """
    folder = cache / spec.key
    if cached(cache, spec):
        meta = json.loads((folder / META_FILE).read_text())
        log.info("reference model %d: cached (%s)", spec.index, spec.key)
        return ReferenceOutcome(
            spec.key,
            str(folder / LOGITS_FILE),
            True,
            meta["train_seconds"],
            0.0,
            meta["epochs"],
            meta["images"],
            _queried(folder, queries, splits, members, nonmembers, runtime, batch_size),
        )
    start = time.perf_counter()
    train_idx, test_idx = np.asarray(spec.train_index, dtype=int), np.asarray(spec.test_index, dtype=int)
    ref_splits = Splits(
        train_x=np.concatenate([splits.train_x[train_idx], splits.test_x[test_idx]]),
        train_y=np.concatenate([splits.train_y[train_idx], splits.test_y[test_idx]]),
        val_x=splits.val_x,
        val_y=splits.val_y,
        test_x=splits.test_x[:0],
        test_y=splits.test_y[:0],
        classes=splits.classes,
    )
    model_cfg = reference_recipe(recipe, recipe.epochs, spec.seed)
    log.info(
        "reference model %d: training %d images for %d epochs (seed %d)",
        spec.index,
        len(ref_splits.train_y),
        model_cfg.epochs,
        spec.seed,
    )
    work = folder.with_name(folder.name + ".partial")
    result = fit(ref_splits, model_cfg, runtime, checkpoint_dir=work)
    model, _ = load_model(result.checkpoint, runtime.device)
    model = runtime.prepare(model)
    _log_scoring(folder, members, nonmembers, queries)
    member_logits, member_views = audit_logits(
        model, splits.train_x[members], runtime, queries=queries, batch_size=batch_size
    )
    nonmember_logits, nonmember_views = audit_logits(
        model, splits.test_x[nonmembers], runtime, queries=queries, batch_size=batch_size
    )
    folder.mkdir(parents=True, exist_ok=True)
    if member_views is not None:
        _write_views(folder, queries, member_views, nonmember_views)
    np.savez_compressed(folder / LOGITS_FILE, member_logits=member_logits, nonmember_logits=nonmember_logits)
    shutil.copy2(result.checkpoint, folder / "model.pt")
    meta = {
        "index": spec.index,
        "seed": spec.seed,
        "epochs": result.plan.get("epochs", model_cfg.epochs),
        "images": len(ref_splits.train_y),
        "train_seconds": result.train_seconds,
        "recipe": model_cfg.model_dump(mode="json"),
        "kept_weights": result.choice.get("kept"),
        "val_accuracy": result.final_val_accuracy,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))  # last: marks the entry complete
    shutil.rmtree(work, ignore_errors=True)
    queried = _queried(folder, queries, splits, members, nonmembers, runtime, batch_size)
    wall = time.perf_counter() - start
    return ReferenceOutcome(
        spec.key, str(folder / LOGITS_FILE), False, result.train_seconds, wall, meta["epochs"], meta["images"], queried
    )


def _queried(
    folder: Path,
    queries: int,
    splits: Splits,
    members: np.ndarray,
    nonmembers: np.ndarray,
    runtime: Runtime,
    batch_size: int,
) -> str | None:
    """The reference model's logits of the audited points under `queries` views: read from
    `logits.q<queries>.npz` beside it, or computed from its `model.pt` and written there."""
    if queries == 1:
        return None
    path = _views_path(folder, queries)
    if not path.is_file():
        model, _ = load_model(folder / "model.pt", runtime.device)
        model = runtime.prepare(model)
        _log_scoring(folder, members, nonmembers, queries)
        _write_views(
            folder,
            queries,
            query_logits(model, splits.train_x[members], runtime, queries=queries, batch_size=batch_size),
            query_logits(model, splits.test_x[nonmembers], runtime, queries=queries, batch_size=batch_size),
        )
    return str(path)


def _views_path(folder: Path, queries: int) -> Path:
    return folder / f"logits.q{queries}.npz"


def _log_scoring(folder: Path, members: np.ndarray, nonmembers: np.ndarray, queries: int) -> None:
    if queries > 1:
        log.info(
            "reference model %s: scoring %d audited images under %d views",
            folder.name,
            len(members) + len(nonmembers),
            queries,
        )


def _write_views(folder: Path, queries: int, member_views: np.ndarray, nonmember_views: np.ndarray) -> None:
    """The audited points' logits under `queries` views, to `logits.q<queries>.npz` in `folder`
    (complete or absent)."""
    path = _views_path(folder, queries)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, member_query_logits=member_views, nonmember_query_logits=nonmember_views)
    partial.replace(path)
