"""Waivers: a named person accepts a check that the data at hand could not settle.

An audit check is `inconclusive` when its interval straddles the policy threshold: the test
split is too small to say pass or fail. A reviewer may still decide to ship. A `Waiver` records
that decision: which check (a verdict group such as `fairness`), who accepted it, when, why,
and the evidence the check showed at that moment. Only an `inconclusive` check can be waived:
a `fail` is a measured failure, and a waiver of it would hide a known fault.

A waiver never changes an audit verdict (`verdict/overall` stays what the audits found). The
release gate honours it: a waived verdict criterion passes as `waived`, and the gate's overall
criterion leaves the waived checks out (`auditflow.audits.gate`). Waivers are stored on the
pipeline run as one tag per check (`release/waiver/<check>`, JSON, so that the gate reads them
from the run's tags) and together as `release/waivers.json`.

Pure: no MLflow; `auditflow.audits.release.waive` logs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from auditflow.core.names import Release, Verdict, gating_verdicts

MAX_TEXT = 1000  # characters kept of a reason or of the evidence (an MLflow tag holds 8,000)


@dataclass(frozen=True)
class Waiver:
    """One accepted inconclusive check."""

    check: str  # a verdict group: fairness, fairness_subgroups, privacy_strength, ...
    reason: str  # why it is acceptable, in the approver's words
    by: str  # who accepted it
    at: str  # when, ISO 8601 UTC
    verdict: str  # the check's verdict when it was waived (always `inconclusive`)
    evidence: str  # what the check said then: its reason line, or its tag value

    def as_tag(self) -> tuple[str, str]:
        """(`release/waiver/<check>`, the waiver as JSON): how it is stored on the run."""
        return Release.WAIVER.format(check=self.check), json.dumps(asdict(self), sort_keys=True)

    def line(self) -> str:
        """One line for the gate record and the report."""
        return f"waived by {self.by} on {self.at[:10]}: {self.reason}"


def waivable(verdicts: Mapping[str, str]) -> dict[str, str]:
    """The checks that may be waived: verdict group -> verdict, for the groups that count
    towards `verdict/overall` (`Verdict.gates`) and are `inconclusive`."""
    return {g: v for g, v in verdicts.items() if Verdict.gates(g) and v == "inconclusive"}


def make_waiver(
    check: str,
    *,
    reason: str,
    by: str,
    verdicts: Mapping[str, str],
    evidence: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Waiver:
    """A waiver of `check` on a run whose verdict groups are `verdicts` (group -> verdict).
    `ValueError` naming the bad value: an unknown check, one that is not inconclusive, an empty
    reason or approver."""
    gating = {g: v for g, v in verdicts.items() if Verdict.gates(g)}
    open_checks = waivable(verdicts)
    listed = ", ".join(sorted(open_checks)) or "none"
    if check not in gating:
        raise ValueError(f"--waive {check!r}: this run has no such check; the inconclusive ones are: {listed}")
    if gating[check] != "inconclusive":
        raise ValueError(
            f"--waive {check!r}: the check is {gating[check]}, and only an inconclusive check can be waived "
            f"(a fail is a measured fault); the inconclusive ones are: {listed}"
        )
    if not reason.strip():
        raise ValueError(f"--waive {check!r}: --reason is empty; say why the open check is acceptable")
    if not by.strip():
        raise ValueError(f"--waive {check!r}: --by is empty; name who accepts it")
    return Waiver(
        check=check,
        reason=reason.strip()[:MAX_TEXT],
        by=by.strip()[:200],
        at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        verdict=gating[check],
        evidence=(evidence or {}).get(check, "")[:MAX_TEXT],
    )


def waivers_from_tags(tags: Mapping[str, str]) -> tuple[Waiver, ...]:
    """The waivers stored on a run (`Waiver.as_tag`), by check; a tag that does not parse is
    skipped (a waiver must be whole to count)."""
    prefix = Release.WAIVER.format(check="")
    found = []
    for key in sorted(k for k in tags if k.startswith(prefix)):
        try:
            found.append(Waiver(**json.loads(tags[key])))
        except (TypeError, ValueError):
            continue
    return tuple(found)


def honoured(waivers: Iterable[Waiver], verdicts: Mapping[str, str]) -> dict[str, Waiver]:
    """Check -> waiver, for the waivers that still apply: the check is still `inconclusive`
    (a rerun that settled it, either way, drops its waiver)."""
    return {w.check: w for w in waivers if verdicts.get(w.check) == "inconclusive"}


def held(tags: Mapping[str, str]) -> dict[str, Waiver]:
    """Check -> waiver, for the waivers stored in a run's `tags` whose check is still
    inconclusive there (`honoured` of `waivers_from_tags`)."""
    return honoured(waivers_from_tags(tags), gating_verdicts(tags))


def waivers_document(waivers: Iterable[Waiver]) -> list[dict[str, str]]:
    """`release/waivers.json`."""
    return [asdict(w) for w in waivers]
