"""`auditflow bench-train`'s measurement: a profile trained over seeds 0..N-1 by direct `fit`
calls (`bench_train`), its summary, and an optional baseline profile's seed 0 for ratios.

No Prefect and no tracking: the CLI renders the result, and only `--overhead` runs a flow
(`auditflow.flows.bench`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from auditflow.core.config import PipelineConfig
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

    @property
    def all_rows(self) -> tuple[TrainBench, ...]:
        return self.rows + ((self.base,) if self.base else ())

    def report(self) -> dict[str, Any]:
        """The JSON form `--out` writes."""
        out: dict[str, Any] = {"rows": [asdict(r) for r in self.rows], "summary": self.summary}
        if self.base:
            out |= {"baseline": asdict(self.base), "vs_baseline": self.vs_baseline}
        return out


def check_seeds(seeds: int) -> None:
    """`ConfigError` unless at least one seed is asked for (before any work)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")


def bench_seeds(
    snapshot: Snapshot,
    cfg: PipelineConfig,
    *,
    seeds: int,
    baseline: PipelineConfig | None = None,
    on_seed: Callable[[int], None] | None = None,
) -> SeedBench:
    """Train `cfg` once per seed 0..`seeds`-1 (`on_seed(seed)` before each), then `baseline`
    once with seed 0."""
    check_seeds(seeds)
    rows = []
    for seed in range(seeds):
        if on_seed is not None:
            on_seed(seed)
        rows.append(bench_train(snapshot, cfg, seed))
    base = bench_train(snapshot, baseline, 0) if baseline else None
    summary = summarise(rows)
    ratio = compare_to_baseline(summary, base) if base else None
    return SeedBench(cfg.profile, tuple(rows), base, summary, ratio)
