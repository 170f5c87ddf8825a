"""Checks and verdicts: one record per condition a run is judged on, shared by every stage.

A stage judges its own conditions (`judge`) and hands the `Check`s to the tracker, which logs
them as the stage's `<stage>/checks.json` table, sets `verdict/<verdict>` tags on the stage run
and the parent, and the report lists them all in stage order. A verdict group (`fairness`,
`onnx_int8`) takes the worst status of its checks; the run's `verdict/overall` takes the worst
verdict that gates (`warn` is advisory: listed, but it does not fail the run).

Statuses: `pass`, `warn`, `fail`, and `inconclusive` (an interval that straddles the threshold,
for checks that decide on intervals).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "inconclusive"]
SEVERITY: dict[str, int] = {"pass": 0, "warn": 1, "inconclusive": 2, "fail": 3}
DIRECTION_WORDS = {True: ("≥", "at least"), False: ("≤", "at most")}


@dataclass(frozen=True)
class Check:
    """One condition, the value it judged and where the evidence is."""

    key: str  # unique, `verdict/what`: "fairness/worst_class_recall"
    verdict: str  # the verdict group it counts towards: "fairness" -> tag `verdict/fairness`
    title: str  # short, for the list: "Worst-class recall"
    condition: str  # written out: "worst-class recall ≥ 0.5 (fail below)"
    stage: str  # the stage run that logged `metric`
    metric: str  # MLflow metric holding `value`, on that stage run
    value: float | None  # None when it could not be measured
    threshold: float  # the pass/fail boundary, in the unit of `value`
    status: str  # pass | warn | fail | inconclusive
    evidence: str  # a report anchor ("#fairness") or an artifact path in the stage run
    warn_threshold: float | None = None  # the pass/warn boundary, for checks with a warning band
    note: str = ""  # what the status means in words (which class, which provider failed)
    interval: tuple[float, float] | None = None  # the interval the status was decided on, when it was

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(value: float | None, threshold: float, *, higher_is_better: bool, warn: float | None = None) -> str:
    """`pass`, `warn` or `fail` of a point value against a threshold (inclusive: reaching the
    threshold passes) and an optional warning threshold on the passing side of it."""
    if value is None or value != value:  # not measured, or nan
        return "inconclusive"
    ok = value >= threshold if higher_is_better else value <= threshold
    if not ok:
        return "fail"
    if warn is not None and (value < warn if higher_is_better else value > warn):
        return "warn"
    return "pass"


def judge_interval(low: float, high: float, threshold: float, *, higher_is_better: bool) -> str:
    """`pass`, `fail` or `inconclusive` of an interval [low, high] against a threshold: `pass`
    when the whole interval is on the good side (reaching the threshold counts as good), `fail`
    when the whole interval is beyond it, `inconclusive` when it straddles the threshold."""
    if not low <= high:
        raise ValueError(f"need low <= high, got low {low} and high {high}")
    if higher_is_better:
        return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"
    return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"


def condition_text(
    name: str, threshold: float, *, higher_is_better: bool, warn: float | None = None, fmt: str = "g"
) -> str:
    """`"worst-class recall ≥ 0.5"`, with the warning band when there is one."""
    sign = DIRECTION_WORDS[higher_is_better][0]
    text = f"{name} {sign} {threshold:{fmt}}"
    if warn is not None:
        text += f" (warn beyond {warn:{fmt}})"
    return text


def worst(statuses: Iterable[str]) -> str:
    """The most severe status; `pass` for none."""
    return max(statuses, key=lambda s: SEVERITY.get(s, SEVERITY["fail"]), default="pass")


def verdicts(checks: Iterable[Check | dict[str, Any]]) -> dict[str, str]:
    """Verdict group -> the worst status of its checks."""
    groups: dict[str, list[str]] = {}
    for check in checks:
        c = check if isinstance(check, dict) else check.as_dict()
        groups.setdefault(c["verdict"], []).append(c["status"])
    return {group: worst(statuses) for group, statuses in groups.items()}


def overall(verdict_values: Iterable[str], missing: bool = False) -> str:
    """The run's verdict: `fail` if any verdict fails (or a stage is missing), else
    `inconclusive` if any is, else `pass`; warnings do not change it."""
    gating = [v for v in verdict_values if v != "warn"]
    if missing:
        gating.append("fail")
    return worst(gating)
