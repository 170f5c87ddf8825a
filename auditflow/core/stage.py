"""The one shape every stage's pure function returns: a frozen `StageReport`.

A stage (`models/...` or `audits/...`) computes over arrays and configs and returns what it
found as data: metrics, tags, checks, tables, figures and a summary. It knows nothing of
Prefect or MLflow. The stage's Prefect task hands the report to `Tracker.publish`, which logs
every part of it to the stage's MLflow run (and the headline and verdicts to the parent), in
one place, the same way for every stage.

Artifact names are paths inside the stage run (`"fairness/per_class.json"`). Figures are
matplotlib figures; publishing closes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditflow.core.checks import Check


@dataclass(frozen=True)
class StageReport:
    """What one stage found, ready to be published.

    - `metrics`: logged on the stage run; `headline` on the stage run *and* the parent run
      (the runs table compares pipeline runs by these).
    - `params`, `tags`: on the stage run; `parent_tags` on the parent run.
    - `checks`: the stage's pass/fail/inconclusive conditions (`<stage>/checks.json` and one
      `verdict/<group>` tag per group, on the stage run and the parent).
    - `tables`: artifact name -> rows (same-keyed dicts), shown as tables in the MLflow UI;
      `columns`: artifact name -> equal-length columns, for tables kept column-wise.
    - `documents`: artifact name -> a JSON-able object; `texts`: artifact name -> text.
    - `figures`: artifact name -> matplotlib figure.
    - `files`: (local path, artifact folder) pairs, copied as they are.
    - `summary`: the small result the report reads back (`<stage>/summary.json`); None: none.
    """

    stage: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    headline: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    parent_tags: Mapping[str, str] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    tables: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    columns: Mapping[str, dict[str, list[Any]]] = field(default_factory=dict)
    documents: Mapping[str, Any] = field(default_factory=dict)
    texts: Mapping[str, str] = field(default_factory=dict)
    figures: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[tuple[Path, str], ...] = ()
    summary: Mapping[str, Any] | None = None

    def finite_metrics(self) -> dict[str, float]:
        """`metrics | headline` without None and NaN (MLflow stores neither usefully)."""
        return _finite({**self.metrics, **self.headline})


def _finite(values: Mapping[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and v == v}


@dataclass(frozen=True)
class AuditOutcome:
    """What an audit stage gives the flow, beside the report it publishes."""

    report: StageReport
    status: str  # pass | fail | inconclusive, decided on intervals
    reasons: tuple[str, ...]  # why it is not a pass, one sentence each
    headline: float  # worst-class recall (fairness) or the strongest attack's TPR at the verdict FPR (privacy)
    attack: str = ""  # privacy: the strongest attack
