"""`auditflow bench-train`'s measurement: a profile trained over seeds 0..N-1 by direct `fit`
calls (`bench_train`), its summary, an optional baseline profile's seed 0 for ratios, and an
optional "against" recipe (the same profile with overrides: today's recipe, say) trained on the
same seeds, interleaved seed by seed so that a machine that slows down mid-run slows both alike.

No Prefect and no tracking: the CLI renders the result, and only `--overhead` runs a flow
(`auditflow.flows.bench`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import fmean
from typing import Any

from auditflow.core.config import PipelineConfig, load_config
from auditflow.core.data import Snapshot
from auditflow.core.errors import ConfigError
from auditflow.models.training.benchtrain import TrainBench, bench_train, compare_to_baseline, summarise


@dataclass(frozen=True)
class SeedBench:
    """Every seed's figures, the baseline's (None without one) and their summaries."""

    profile: str
    rows: tuple[TrainBench, ...]  # seed 0..N-1
    base: TrainBench | None  # the baseline profile, seed 0
    summary: dict[str, float]  # `summarise(rows)`: mean and sd of accuracy, mean training seconds
    vs_baseline: dict[str, float | None] | None  # `compare_to_baseline`; None without a baseline
    against: tuple[TrainBench, ...] = ()  # the "against" recipe, seed 0..N-1; () without one
    vs_against: PairedGain | None = None

    @property
    def all_rows(self) -> tuple[TrainBench, ...]:
        return self.rows + self.against + ((self.base,) if self.base else ())

    def report(self) -> dict[str, Any]:
        """The JSON form `--out` writes."""
        out: dict[str, Any] = {"rows": [asdict(r) for r in self.rows], "summary": self.summary}
        if self.base:
            out |= {"baseline": asdict(self.base), "vs_baseline": self.vs_baseline}
        if self.vs_against:
            out |= {"against": [asdict(r) for r in self.against], "vs_against": asdict(self.vs_against)}
        return out


@dataclass(frozen=True)
class PairedGain:
    """The profile against another recipe trained on the same seeds with the same budget."""

    accuracy_ratio: float  # mean test accuracy (with TTA) of the profile / of the other recipe
    points: float  # mean difference, accuracy points (profile - other)
    points_by_seed: tuple[float, ...]  # the paired differences, seed 0..N-1
    shipped_ratio: float  # the same ratio without TTA: the files that would ship
    shipped_points_by_seed: tuple[float, ...]
    train_time_ratio: float  # mean training seconds, profile / other (a budget makes both ~1)
    epochs: tuple[float, float]  # mean epochs run: profile, other
    equal_epochs: bool = False  # the other recipe ran each seed's epochs of the profile, no budget

    @property
    def terms(self) -> str:
        """What the two arms shared, as the summary line says it."""
        return "same seeds, the profile's epochs" if self.equal_epochs else "same seeds, same budget"


def paired_gain(
    rows: tuple[TrainBench, ...], other: tuple[TrainBench, ...], *, equal_epochs: bool = False
) -> PairedGain:
    """`rows` against `other`, seed by seed (both lists in seed order, the same seeds)."""
    if [r.seed for r in rows] != [r.seed for r in other] or not rows:
        raise ValueError(f"paired seeds differ: {[r.seed for r in rows]} vs {[r.seed for r in other]}")
    acc, acc_other = fmean(r.test_accuracy for r in rows), fmean(r.test_accuracy for r in other)
    pairs = list(zip(rows, other, strict=True))
    return PairedGain(
        accuracy_ratio=acc / acc_other,
        points=100 * (acc - acc_other),
        points_by_seed=tuple(100 * (a.test_accuracy - b.test_accuracy) for a, b in pairs),
        shipped_ratio=fmean(r.shipped_accuracy for r in rows) / fmean(r.shipped_accuracy for r in other),
        shipped_points_by_seed=tuple(100 * (a.shipped_accuracy - b.shipped_accuracy) for a, b in pairs),
        train_time_ratio=fmean(r.train_seconds for r in rows) / fmean(r.train_seconds for r in other),
        epochs=(fmean(r.epochs for r in rows), fmean(r.epochs for r in other)),
        equal_epochs=equal_epochs,
    )


def at_epochs(cfg: PipelineConfig, epochs: int) -> PipelineConfig:
    """`cfg` trained for exactly `epochs`, without a time budget (`bench-train --equal-epochs`)."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs, "time_budget_s": None})})


def against_config(profile: str, overrides: list[str], label: str) -> PipelineConfig:
    """`bench-train --against`: the profile with the run's overrides and then the against ones,
    named after the latter (`label`) so that its rows say which recipe they are (e.g. "quick
    with train.flip_mode=random")."""
    cfg = load_config(profile, overrides)
    return cfg.model_copy(update={"profile": f"{cfg.profile} with {label}"})


def check_seeds(seeds: int, *, equal_epochs: bool = False, against: bool = False) -> None:
    """`ConfigError` unless at least one seed is asked for, and `--equal-epochs` only with
    `--against` (before any work)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if equal_epochs and not against:
        raise ConfigError("--equal-epochs needs --against KEY=VALUE: it sets the compared recipe's epochs")


def bench_seeds(
    snapshot: Snapshot,
    cfg: PipelineConfig,
    *,
    seeds: int,
    baseline: PipelineConfig | None = None,
    against: PipelineConfig | None = None,
    equal_epochs: bool = False,
    on_seed: Callable[[int], None] | None = None,
) -> SeedBench:
    """Train `cfg` once per seed 0..`seeds`-1 (`on_seed(seed)` before each), each seed followed
    by `against` (`against_config`) on the same seed, then `baseline` once with seed 0.

    `equal_epochs`: `against` runs the epochs the budget gave `cfg` on that seed, without a
    budget of its own. For changes that cost nothing per step (initialisation, flips, crops):
    the machine's speed, which moves within an hour, then cannot give the two arms different
    epoch counts."""
    check_seeds(seeds, equal_epochs=equal_epochs, against=against is not None)
    rows, other = [], []
    for seed in range(seeds):
        if on_seed is not None:
            on_seed(seed)
        rows.append(bench_train(snapshot, cfg, seed))
        if against is not None:
            other.append(bench_train(snapshot, at_epochs(against, rows[-1].epochs) if equal_epochs else against, seed))
    base = bench_train(snapshot, baseline, 0) if baseline else None
    summary = summarise(rows)
    ratio = compare_to_baseline(summary, base) if base else None
    gain = paired_gain(tuple(rows), tuple(other), equal_epochs=equal_epochs) if other else None
    return SeedBench(cfg.profile, tuple(rows), base, summary, ratio, tuple(other), gain)
