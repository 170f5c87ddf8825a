"""The run's decision in a few lines: is the model good, may it ship, what to do next.

A reviewer reads this first (the report's first screen, the end of `auditflow run`). It states
one decision, the release gate's, beside the audit verdict it rests on, so the two never read
as rival badges; then the reasons (the gate's failing criteria, or the waivers it honoured) and
the next steps. A next step is something the reviewer can do with this run: the policy value at
which an open check is decidable on this test split, the `promote --waive` command that accepts
it, or the remedy for a check that failed.

Pure: built from what the report already reads (the overall verdict, the gate record, the check
rows and the waivers on the run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from auditflow.audits.waivers import Waiver
from auditflow.core.names import Verdict

# What to try when a check of a verdict group fails (a measured fault, not an open question)
REMEDIES: dict[str, str] = {
    "learning": "train longer or with a larger profile (`--profile full`), or check the labels",
    "fairness": "look at the report's mitigation section (per-class logit adjustment) and at the worst "
    "class's data; more training images of that class usually help most",
    "fairness_subgroups": "look at the subgroup table: the group the model serves worst needs more examples",
    "privacy": "train with differential privacy (`--profile dp`) or stronger regularisation, then audit again",
    "privacy_strength": "run the reference-model attacks (`privacy.tier: reference`) so that the audit is strong "
    "enough to be believed",
    "transparency": "look at the report's shortcut table and the flagged class's mean map: remove the tag, "
    "border or watermark from that class's images (or add it to every class's), retrain and audit again",
    "transparency_method": "the explanation method failed its own check: try `transparency.method: saliency` or "
    "more `transparency.steps`; the model's verdicts do not depend on it",
    "onnx_parity": "re-export (`auditflow bench RUN_ID`) and check the export section's largest differences",
    "calibration": "the calibrated output ships inside the ONNX file; a fail here means the temperature did not fit "
    "on validation: more validation images help",
}


@dataclass(frozen=True)
class Decision:
    """One decision with its reasons and next steps."""

    status: str  # pass | fail | inconclusive: the colour it is shown in
    outcome: str  # "ship", "do not ship", "not gated yet"
    headline: str  # one sentence: the outcome, the gate and the audit verdict
    reasons: tuple[str, ...]
    next_steps: tuple[str, ...]


def _check_lines(checks: Sequence[Mapping[str, Any]], status: str, waived: set[str]) -> list[Mapping[str, Any]]:
    """The checks with `status` that count towards the verdict (not an optional ONNX variant's,
    which only decides its recommendation) and are not waived."""
    return [
        c
        for c in checks
        if c.get("status") == status and Verdict.gates(str(c.get("verdict", ""))) and c.get("verdict") not in waived
    ]


def decide(
    *,
    run_id: str,
    overall: str,
    gate: Mapping[str, Any] | None,
    checks: Sequence[Mapping[str, Any]],
    waivers: Sequence[Waiver] = (),
) -> Decision:
    """The decision of run `run_id`: its audit verdict `overall`, the gate record `gate`
    (`release/gate.json`, None when the run was not gated), its checks (`checks.json` rows with
    `verdict`, `title`, `status`, `note`, `value`, `threshold`) and the waivers it holds."""
    waived = {w.check for w in waivers}
    open_checks = _check_lines(checks, "inconclusive", waived)
    failed = _check_lines(checks, "fail", set())
    steps: list[str] = []
    for c in failed:
        remedy = REMEDIES.get(str(c.get("verdict", "")), "see its section in the report")
        steps.append(f"{c['title']} fails ({c['value']} against {c['threshold']}): {remedy}.")
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for c in open_checks:
        groups.setdefault(str(c.get("verdict", "")), []).append(c)
    for group, rows in groups.items():
        said = "; ".join(f"{c['title']}: {c['note']}" if c.get("note") else str(c["title"]) for c in rows)
        steps.append(
            f"`{group}` is inconclusive ({said}). Change the policy where the note names a value, or accept it: "
            f"`auditflow promote {run_id} --waive {group} --reason WHY`."
        )
    audit = f"audit verdict {overall}"
    if gate is None:
        return Decision(
            status=overall,
            outcome="not gated yet",
            headline=f"Not gated yet; {audit}.",
            reasons=tuple(f"{c['title']}: {c['status']}" for c in failed + open_checks),
            next_steps=(*steps, f"Gate it and, if it passes, make it champion: `auditflow promote {run_id}`."),
        )
    model = f"{gate.get('model_name', 'the model')} v{(gate.get('candidate') or {}).get('version') or '?'}"
    if gate.get("verdict") == "pass":
        note = f" with {len(waivers)} waived check{'s' if len(waivers) != 1 else ''}" if waivers else ""
        return Decision(
            status="pass",
            outcome="ship",
            headline=f"Ship: {model} passed the release gate{note}; {audit}.",
            reasons=tuple(f"`{w.check}` {w.line()}" for w in waivers),
            next_steps=("Sign the sign-off block at the end of this report.",),
        )
    reasons = tuple(gate.get("reasons") or ())
    alternative = gate.get("alternative") or {}
    if alternative.get("verdict") == "pass":
        steps.insert(
            0,
            f"The logit-adjusted variant `{alternative['file']}` passes this gate in the plain file's place "
            "(release gate section): it trades some accuracy for the worst class's recall. To ship it: "
            f"`auditflow promote {run_id} --variant adjusted`.",
        )
    elif alternative.get("reasons"):
        steps.append(
            f"The logit-adjusted variant `{alternative['file']}` does not pass this gate in the plain file's place "
            f"either: {alternative['reasons'][0]}."
        )
    if any(str(r).startswith(("Test accuracy vs", "Worst-class recall vs", "Privacy")) for r in reasons):
        champion = (gate.get("champion") or {}).get("run_id")
        if champion:
            steps.append(f"See what changed against the champion: `auditflow compare {champion} {run_id}`.")
    return Decision(
        status="fail",
        outcome="do not ship",
        headline=f"Do not ship: {model} failed the release gate; {audit}.",
        reasons=reasons,
        next_steps=tuple(steps) or ("Read the release gate section: each failing criterion links its evidence.",),
    )
