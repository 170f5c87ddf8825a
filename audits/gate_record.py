"""The release gate's record: what it decided and why, as logged and as shown.

A `GateRecord` holds every `Criterion` the gate judged (condition, value, threshold, status,
a link to the evidence) and the run-vs-champion comparison table. `GateRecord.as_dict` is
what is logged (`release/gate.json`); `gate_markdown` renders the record, or that logged dict,
to Markdown (template `gate.md.j2`: `release/gate.md` and the report's release section).
`auditflow.audits.gate` builds the record (`evaluate_gate`) and re-exports these names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PASSING = ("pass", "skipped", "waived")  # statuses that let the gate pass (waived: `audits.waivers`)
SCHEMA = 1


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Criterion:
    """One condition of the gate, what it judged and why it came out as it did."""

    key: str  # "accuracy/regression"
    group: str  # what it is about: accuracy, worst_class_recall, fairness, privacy, onnx_parity, latency, overall
    kind: str  # absolute | regression | verdict
    title: str
    condition: str  # written out, with the threshold
    metric: str  # the MLflow metric or tag judged
    value: float | str | None  # the candidate's; None when not logged
    threshold: float | str | None  # the bound it was judged against (for regressions: derived from the champion's)
    champion: float | str | None  # the champion's value, for regressions
    status: str  # pass | fail | inconclusive | skipped | waived (an inconclusive verdict someone accepted)
    reason: str  # one line
    evidence: str  # the stage run that holds the value, in the MLflow UI
    anchor: str  # the section of the audit report
    interval: tuple[float, float] | None = None  # candidate - champion, when decided on a paired interval


@dataclass(frozen=True)
class GateRecord:
    """The gate's decision with everything it rests on; `as_dict` is what is logged."""

    verdict: str  # pass | fail
    model_name: str
    candidate: dict[str, Any]  # run_id, version, url, test_split, hardware
    champion: dict[str, Any] | None  # the same for the champion; None when there is none
    comparable: bool  # regression criteria were judged
    comparability: str  # why (not) comparable, in words
    criteria: tuple[Criterion, ...]
    comparison: tuple[dict[str, Any], ...]  # metric, title, candidate, champion, difference, better
    config: dict[str, Any]
    decided_at: str  # ISO 8601, UTC
    waivers: tuple[dict[str, Any], ...] = ()  # the waivers the gate honoured (`Waiver` fields)
    # the logit-adjusted ONNX variant judged by the same criteria in the plain file's place
    # (`gate.adjusted_facts`): variant, file, verdict, summary, reasons; None when none was exported
    alternative: dict[str, Any] | None = None
    schema: int = SCHEMA

    @property
    def failing(self) -> tuple[Criterion, ...]:
        return tuple(c for c in self.criteria if c.status not in PASSING)

    @property
    def reasons(self) -> tuple[str, ...]:
        """One line per criterion that stopped the release."""
        return tuple(f"{c.title}: {c.reason}" for c in self.failing)

    def summary(self) -> str:
        """One line: the verdict and why."""
        counts = {s: sum(c.status == s for c in self.criteria) for s in ("pass", "fail", "inconclusive", "skipped")}
        if self.verdict == "pass":
            waived = f", {len(self.waivers)} waived" if self.waivers else ""
            return f"pass: {counts['pass']} criteria passed{waived}, {counts['skipped']} skipped ({self.comparability})"
        return "fail: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failing"] = [c.key for c in self.failing]
        out["reasons"] = list(self.reasons)
        out["summary"] = self.summary()
        return out


# ---------------------------------------------------------------------------- rendering
def gate_markdown(record: GateRecord | dict[str, Any]) -> str:
    """The gate record as Markdown (template `gate.md.j2`): verdict, reasons, every criterion,
    and the run-vs-champion table. Takes the record or its logged dict form."""
    from auditflow.audits.documents import environment

    gate = record.as_dict() if isinstance(record, GateRecord) else record
    env = environment()
    return env.get_template("gate.md.j2").render(gate=gate)
