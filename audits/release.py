"""Release services: register a run's model, gate it, promote it; plain functions, no Prefect.

`register` adds a version of the ONNX model the export stage logged to the MLflow registry
(alias `candidate` when asked), `gate` judges the run against the policy and against the
version aliased `champion` (`auditflow.audits.gate`) and logs the gate record to the pipeline
run, and `promote` moves `champion` to the version. A gate that fails is an answer, not an
error: the version loses `candidate` and is tagged (`release/status=rejected`) and described as
rejected, with the gate's summary, in the registry.

Rollback is explicit. A step that changes the registry hands an undo record (`Registration`,
`Promotion`) to its `on_undo` callback before it changes anything; `Rollback` collects them and,
when its block raises, calls their `undo()` in reverse order: `champion` and `candidate` point
where they pointed before, and a version registered in the block keeps no alias and is tagged
`release/status=rolled_back` (kept, not deleted, as evidence). The flow's tasks
(`auditflow.tasks.release`) keep the same records in their Prefect transaction and their
on_rollback hooks call the same `undo()`. The CLI (`auditflow gate | promote | models`) calls
`gate_run`, `promote_run` and `list_models` here, with no Prefect server.
"""

from __future__ import annotations

import getpass
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from pydantic import ValidationError

from auditflow.audits.compare import Comparison
from auditflow.audits.comparison import paired_with
from auditflow.audits.documents import registered_name
from auditflow.audits.gate import (
    METRICS,
    GateConfig,
    GateRecord,
    RunFacts,
    adjusted_facts,
    comparability,
    evaluate_gate,
    facts_from_record,
)
from auditflow.audits.gate import gate_markdown as gate_markdown
from auditflow.audits.waivers import Waiver, held, make_waiver, waivers_document, waivers_from_tags
from auditflow.core import names
from auditflow.core.config import apply_override, available_profiles
from auditflow.core.errors import ConfigError, TrackingError
from auditflow.core.names import gating_verdicts
from auditflow.core.tracking import RunLogger, RunRecord, Tracker, TrackingRef
from auditflow.core.tracking.registry import EXPORT_RUN_TAG, VARIANT_TAG, ModelRegistry, VersionRow

log = logging.getLogger(__name__)

CANDIDATE = "candidate"  # alias, and a version's status
CHAMPION = "champion"
REJECTED, RETIRED, ROLLED_BACK = "rejected", "retired", "rolled_back"  # further statuses of a version
STATUS_TAG = names.Release.STATUS
OUTCOME_TAG = names.Release.OUTCOME
RELEASE_VERDICT = names.verdict_tag(names.Verdict.RELEASE)  # on the run and its version: pass | fail
GATE_JSON = names.Release.GATE_JSON
GATE_MARKDOWN = names.Release.GATE_MD
# candidate minus champion, in the metric's unit, logged when the runs are comparable
_DELTAS = (
    ("accuracy", names.Release.ACCURACY_VS_CHAMPION),
    ("worst_class_recall", names.Release.WORST_CLASS_RECALL_VS_CHAMPION),
    ("privacy", names.Release.PRIVACY_TPR_VS_CHAMPION),
)


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Candidate:
    """A registered version of a run's model, passed between the release steps."""

    uri: str
    model_name: str
    version: str
    run_id: str  # the pipeline (parent) run
    variant: str | None = None  # "adjusted": the run's logit-adjusted file registered in the plain one's place


@dataclass(frozen=True)
class GateOutcome:
    verdict: str  # pass | fail
    summary: str  # one line: the verdict and why
    reasons: tuple[str, ...]  # one line per criterion that stopped the release
    champion_version: str | None  # the champion it was judged against; None = none
    markdown: str  # the gate record, rendered


@dataclass(frozen=True)
class ReleaseResult:
    model_name: str
    version: str  # the run's model version
    verdict: str  # the gate's: pass | fail
    promoted: bool  # `champion` now points at `version`
    champion_version: str | None  # where `champion` points after the release
    previous_champion: str | None
    summary: str
    reasons: tuple[str, ...]
    markdown: str
    waivers: tuple[Waiver, ...] = ()  # recorded by this promotion (`promote --waive`)
    variant: str | None = None  # "adjusted": the version holds the run's logit-adjusted file

    def refusal(self, run_id: str) -> str:
        """Why `promote` refused, in one line naming the gate record."""
        why = "; ".join(self.reasons)
        return (
            f"promote refused: {self.model_name} v{self.version} (run {run_id}) fails the release gate: {why} "
            f"(record: {GATE_JSON} of run {run_id})"
        )


# ---------------------------------------------------------------------------- undo records
class Undo(Protocol):
    def undo(self) -> None: ...


def _alias_version(registry: ModelRegistry, name: str, alias: str) -> str | None:
    found = registry.by_alias(name, alias)
    return found.version if found else None


def _put_back(registry: ModelRegistry, name: str, alias: str, *, version: str, previous: str | None) -> None:
    """If `alias` points at `version`, point it back at `previous` (or remove it)."""
    if _alias_version(registry, name, alias) != version or previous == version:
        return
    if previous:
        registry.set_alias(name, alias, previous)
    else:
        registry.delete_alias(name, alias)


@dataclass(frozen=True)
class Registration:
    """How to undo `register`: the store, the version and where the aliases pointed before."""

    uri: str
    run_id: str  # the pipeline run whose model `version` is
    model_name: str
    version: str
    created: bool  # registered by this step
    previous_candidate: str | None
    previous_champion: str | None

    def undo(self) -> None:
        """`candidate` (and `champion`, should it point here) back on the versions they pointed
        at; a version this step registered is tagged rolled_back."""
        registry = ModelRegistry(Tracker(self.uri))
        _put_back(registry, self.model_name, CANDIDATE, version=self.version, previous=self.previous_candidate)
        _put_back(registry, self.model_name, CHAMPION, version=self.version, previous=self.previous_champion)
        try:  # the aliases matter; tags that fail to land are only logged
            if self.created:
                registry.set_version_tags(self.model_name, self.version, {STATUS_TAG: ROLLED_BACK})
            RunLogger(registry.client, self.run_id).set_tags(
                {OUTCOME_TAG: f"release rolled back: {self.model_name} v{self.version} holds no alias"}
            )
        except Exception as err:  # a failing undo would stop the undos after it
            log.warning("could not tag %s v%s as rolled back: %s", self.model_name, self.version, err)
        log.warning("release rolled back: %s v%s withdrawn", self.model_name, self.version)


@dataclass(frozen=True)
class Promotion:
    """How to undo `promote`: where `champion` pointed, whether the version had `candidate`,
    and its status before."""

    uri: str
    model_name: str
    version: str
    previous_candidate: str | None  # the version, when it had `candidate`
    previous_champion: str | None
    previous_status: str | None

    def undo(self) -> None:
        """`champion` back on the previous version (or unset), `candidate` back on the version
        if it had it, and the status tags as they were."""
        registry = ModelRegistry(Tracker(self.uri))
        _put_back(registry, self.model_name, CHAMPION, version=self.version, previous=self.previous_champion)
        if self.previous_candidate and _alias_version(registry, self.model_name, CANDIDATE) is None:
            registry.set_alias(self.model_name, CANDIDATE, self.previous_candidate)
        try:
            if self.previous_status:
                registry.set_version_tags(self.model_name, self.version, {STATUS_TAG: self.previous_status})
            if self.previous_champion and self.previous_champion != self.version:
                registry.set_version_tags(self.model_name, self.previous_champion, {STATUS_TAG: CHAMPION})
        except Exception as err:  # a failing undo would stop the undos after it
            log.warning("could not restore the status tags of %s: %s", self.model_name, err)
        log.warning("release rolled back: champion of %s back on v%s", self.model_name, self.previous_champion)


class Rollback:
    """Collects undo records (`add`, the steps' `on_undo`); when the `with` block raises, undoes
    them in reverse order, then lets the error go on."""

    def __init__(self) -> None:
        self.steps: list[Undo] = []

    def add(self, step: Undo) -> None:
        self.steps.append(step)

    def __enter__(self) -> Rollback:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            return
        for step in reversed(self.steps):
            try:
                step.undo()
            except Exception:  # the others still run; the original error is the one raised
                log.exception("could not undo %s", step)


# ---------------------------------------------------------------------------- helpers
def _model_name(record: RunRecord, configured: str | None) -> str:
    """The registered model's name: configured, else the run's experiment name."""
    return registered_name(configured, record.experiment_name)


ADJUSTED = names.Verdict.ADJUSTED_VARIANT
# why the adjusted file's regressions against the champion are raw differences, not paired tests
PLAIN_EVIDENCE = "the paired evidence is the plain model's"


def _exported_model(record: RunRecord, variant: str | None = None) -> tuple[str, str]:
    """(model URI, export stage run id) of the ONNX model the run's export stage logged: the
    shipped FP32 file, or with `variant` "adjusted" its logit-adjusted variant."""
    summary = record.summaries.get(names.Stage.EXPORT) or {}
    if variant == ADJUSTED and summary and not summary.get("adjusted_model_uri"):
        raise TrackingError(
            f"run {record.run_id} exported no logit-adjusted variant: its fairness stage found that the adjustment "
            "passes no fairness check the plain model does not (report: Mitigation)"
        )
    uri = summary.get("adjusted_model_uri" if variant == ADJUSTED else "model_uri")
    if not uri or record.stage_status.get(names.Stage.EXPORT) != "FINISHED":
        raise TrackingError(
            f"run {record.run_id} has no finished export stage with a logged ONNX model to register; "
            + _way_to_a_model(record)
        )
    return uri, record.stage_run_ids[names.Stage.EXPORT]


def _way_to_a_model(record: RunRecord) -> str:
    """Advice that leads somewhere: `auditflow bench` exports a run that finished training on a
    snapshot; a run that did not has nothing to export, and only a rerun of the pipeline helps."""
    trained = record.stage_status.get(names.Stage.TRAIN) == "FINISHED" and (
        record.summaries.get(names.Stage.INGEST) or {}
    ).get("snapshot")
    if trained:
        return f"export its trained model with `auditflow bench {record.run_id}`, then promote it"
    profile = record.tags.get("auditflow.profile") or record.config.get("profile") or ""
    if profile not in available_profiles() and not Path(profile).is_file():
        profile = "PROFILE"  # a config built in code ("custom"), or a profile file not on this machine
    source = record.tags.get("auditflow.source") or "DATA"
    return (
        f"it ended {record.status} before training finished, so there is no model to export: rerun the pipeline "
        f"(`auditflow run --profile {profile} --data {source}`, with the --set overrides it had; its resolved "
        f"configuration is config.json of run {record.run_id}) and promote the new run"
    )


def _champion(tracker: Tracker, run_id: str, version: str) -> tuple[RunFacts, RunRecord | None]:
    try:
        record = tracker.load_run(run_id)
    except TrackingError:  # a champion whose run left this store: nothing to compare with
        return RunFacts(run_id=run_id, metrics={}, tags={}, overall=None, test_split="", version=version), None
    return facts_from_record(record, version=version), record


def _of_variant(versions: list[Any], variant: str | None) -> list[Any]:
    """The registry versions of a run that hold `variant` (None: the plain file)."""
    return [v for v in versions if v.tags.get(VARIANT_TAG) == variant]


def judge_run(
    tracker: Tracker,
    record: RunRecord,
    *,
    model_name: str,
    cfg: GateConfig,
    version: str | None,
    variant: str | None = None,
) -> GateRecord:
    """The gate record of pipeline run `record` (model version `version`) against the version
    `champion` of `model_name` points at now; the regressions decided on the paired comparison
    of the two runs (`auditflow.audits.comparison.paired_with`) where both runs hold its evidence."""
    champion = ModelRegistry(tracker).by_alias(model_name, CHAMPION)
    facts = facts_from_record(record, version=version)
    if variant == ADJUSTED:  # the adjusted file in the plain one's place (`gate.adjusted_facts`)
        adjusted = adjusted_facts(facts)
        if adjusted is None:
            raise TrackingError(f"run {record.run_id} has no audited logit-adjusted variant to gate")
        facts = replace(adjusted, version=version)
    champion_facts, champion_record = (
        (None, None) if champion is None else _champion(tracker, champion.run_id, champion.version)
    )
    paired: Comparison | str = "no champion" if champion is None else "the champion's run is not in this store"
    if champion_record is not None and comparability(facts, champion_facts)[0]:
        paired = paired_with(tracker, champion_record, record, confidence=cfg.confidence)
    if variant == ADJUSTED:
        paired = PLAIN_EVIDENCE
    if isinstance(paired, str):
        judged = evaluate_gate(facts, champion_facts, cfg, model_name=model_name, unpaired=paired)
    else:
        judged = evaluate_gate(facts, champion_facts, cfg, model_name=model_name, paired=paired)
    if variant is not None:
        return judged
    return replace(judged, alternative=_adjusted_alternative(facts, champion_facts, cfg, model_name))


def _adjusted_alternative(
    facts: RunFacts, champion: RunFacts | None, cfg: GateConfig, model_name: str
) -> dict[str, Any] | None:
    """The logit-adjusted variant judged by the same criteria in the plain file's place
    (`gate.adjusted_facts`); None when the run exported none. Its regressions against the
    champion are raw differences: the paired evidence holds the plain model's answers."""
    adjusted = adjusted_facts(facts)
    if adjusted is None:
        return None
    judged = evaluate_gate(adjusted, champion, cfg, model_name=model_name, unpaired=PLAIN_EVIDENCE)
    reasons = list(judged.reasons)
    own = facts.tags.get(names.verdict_tag(names.Verdict.onnx(ADJUSTED)))
    if own != "pass":  # first the file's own checks (parity, accuracy cost), in their words
        said = facts.tags.get(names.Export.VARIANT.format(variant=ADJUSTED, name="judged"), own)
        reasons.insert(0, f"its own checks (verdict/onnx_adjusted): {said}")
    return {
        "variant": ADJUSTED,
        "file": names.Export.ADJUSTED_FILE,
        "verdict": judged.verdict,
        "summary": judged.summary(),
        "reasons": reasons,
    }


def _gate_metrics(record: GateRecord) -> dict[str, float]:
    """Criteria counts by status and, when comparable, the candidate-minus-champion deltas
    (latency: a ratio)."""
    metrics = {
        names.Release.CRITERIA.format(status=status): float(sum(c.status == status for c in record.criteria))
        for status in ("pass", "fail", "inconclusive", "skipped", "waived")
    }
    if not record.comparable:
        return metrics
    deltas = {c.group: (c.value, c.champion) for c in record.criteria if c.kind == "regression"}
    for group, name in _DELTAS:
        value, reference = deltas.get(group, (None, None))
        if isinstance(value, float) and isinstance(reference, float):
            metrics[name] = value - reference
    value, reference = deltas.get("latency", (None, None))
    if isinstance(value, float) and isinstance(reference, float) and reference > 0:
        metrics[names.Release.LATENCY_RATIO_VS_CHAMPION] = value / reference
    return metrics


def log_gate(tracker: Tracker, run_id: str, record: GateRecord) -> None:
    """The record as `release/gate.json` and `.md`, counts and champion deltas as `release/...`
    metrics, and `verdict/release` on the pipeline run."""
    parent = RunLogger(tracker.client, run_id)
    parent.log_dict(record.as_dict(), GATE_JSON)
    parent.log_text(gate_markdown(record), GATE_MARKDOWN)
    parent.log_metrics(_gate_metrics(record))
    champion, version = record.champion, record.candidate["version"]
    parent.set_tags(
        {
            RELEASE_VERDICT: record.verdict,
            names.Release.SUMMARY: record.summary()[:5000],
            names.Release.MODEL: f"{record.model_name} v{version}"
            if version
            else f"{record.model_name}, not registered",
            names.Release.CHAMPION: f"{record.model_name} v{champion['version']}" if champion else "none",
            names.Release.COMPARABILITY: record.comparability,
        }
    )


def _outcome(record: GateRecord) -> GateOutcome:
    champion = record.champion
    return GateOutcome(
        verdict=record.verdict,
        summary=record.summary(),
        reasons=record.reasons,
        champion_version=champion["version"] if champion else None,
        markdown=gate_markdown(record),
    )


def read_gate_record(uri: str, run_id: str) -> dict[str, Any] | None:
    """The gate record logged to pipeline run `run_id` (`release/gate.json`), or None when the
    run has none (render it with `auditflow.audits.gate.gate_markdown`)."""
    tracker = Tracker(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracker.client.download_artifacts(run_id, GATE_JSON, tmp)
        except Exception:  # no gate ran for this run
            return None
        return json.loads(Path(local).read_text())


# ---------------------------------------------------------------------------- waivers
def _evidence(record: RunRecord) -> dict[str, str]:
    """Verdict group -> what its open checks said (title, status, value, interval, note)."""
    said: dict[str, list[str]] = {}
    for checks in record.checks.values():
        for c in checks:
            if c.get("status") in ("pass", "warn"):
                continue
            interval = f" {[round(x, 4) for x in c['interval']]}" if c.get("interval") else ""
            note = f"; {c['note']}" if c.get("note") else ""
            said.setdefault(c.get("verdict", ""), []).append(
                f"{c['title']}: {c['status']}, {c['value']}{interval} vs {c['threshold']}{note}"
            )
    return {group: " | ".join(lines) for group, lines in said.items()}


def record_waivers(tracker: Tracker, record: RunRecord, waivers: list[Waiver]) -> None:
    """Store `waivers` on pipeline run `record` (a tag per check, and `release/waivers.json`
    with every waiver the run holds); a second waiver of a check replaces the first."""
    if not waivers:
        return
    held = {w.check: w for w in waivers_from_tags(record.tags)} | {w.check: w for w in waivers}
    parent = RunLogger(tracker.client, record.run_id)
    parent.set_tags(dict(w.as_tag() for w in waivers))
    parent.log_dict(waivers_document(held.values()), names.Release.WAIVERS_JSON)


def record_waivers_of(uri: str, run_id: str, checks: list[str], *, reason: str, by: str) -> list[Waiver]:
    """`auditflow promote RUN_ID --waive CHECK --reason TEXT`: accept each inconclusive check of
    `checks` on the run, as `by`; `ConfigError` naming a check that is unknown or not
    inconclusive (nothing is recorded then)."""
    tracker = Tracker(uri)
    record = tracker.load_run(run_id)
    verdicts, evidence = gating_verdicts(record.tags), _evidence(record)
    try:
        made = [make_waiver(c, reason=reason, by=by, verdicts=verdicts, evidence=evidence) for c in checks]
    except ValueError as err:
        raise ConfigError(str(err)) from err
    record_waivers(tracker, record, made)
    return made


def _configured_waivers(tracker: Tracker, run_id: str, cfg: GateConfig) -> None:
    """Record the waivers of `release.waivers` whose check is inconclusive on the run; one that
    does not apply (the check passed or failed) is logged and skipped."""
    if not cfg.waivers:
        return
    record = tracker.load_run(run_id)
    verdicts, evidence = gating_verdicts(record.tags), _evidence(record)
    made = []
    for spec in cfg.waivers:
        if spec.check in held(record.tags):
            continue  # already recorded on this run
        try:
            made.append(make_waiver(spec.check, reason=spec.reason, by=spec.by, verdicts=verdicts, evidence=evidence))
        except ValueError as err:
            log.warning("release.waivers: %s; not waived", err)
    record_waivers(tracker, record, made)


# ---------------------------------------------------------------------------- the steps
def register(
    ref: TrackingRef,
    *,
    model_name: str | None,
    set_candidate: bool,
    on_undo: Callable[[Undo], None],
    variant: str | None = None,
) -> Candidate:
    """A registry version of the ONNX model run `ref` exported (the run's existing version when
    it has one), aliased `candidate` when `set_candidate`. `on_undo` gets the `Registration`
    before the registry changes. `variant` "adjusted": the run's logit-adjusted file instead,
    its version tagged `auditflow.variant`."""
    tracker = Tracker(ref.uri)
    registry = ModelRegistry(tracker)
    record = tracker.load_run(ref.run_id)
    name = _model_name(record, model_name)
    model_uri, export_run = _exported_model(record, variant)
    previous_candidate = _alias_version(registry, name, CANDIDATE)
    previous_champion = _alias_version(registry, name, CHAMPION)
    existing = _of_variant(registry.versions(name, ref.run_id), variant)
    if existing:
        version, created = existing[0].version, False
    else:
        tags = {EXPORT_RUN_TAG: export_run} | ({VARIANT_TAG: variant} if variant else {})
        version = registry.register(name, ref.run_id, model_uri, tags=tags).version
        created = True
    on_undo(Registration(ref.uri, ref.run_id, name, version, created, previous_candidate, previous_champion))
    if created:
        registry.set_version_tags(name, version, {STATUS_TAG: CANDIDATE})
    if set_candidate:
        registry.set_alias(name, CANDIDATE, version)
    tracker.parent(ref).set_tags({OUTCOME_TAG: f"registered as {name} v{version}"})
    return Candidate(ref.uri, name, version, ref.run_id, variant)


def gate(ref: TrackingRef, candidate: Candidate, cfg: GateConfig) -> GateOutcome:
    """Judge run `ref` (its model is `candidate`) against the policy and the champion; log the
    gate record to the run and the verdict to the version. Moves no alias."""
    tracker = Tracker(ref.uri)
    _configured_waivers(tracker, ref.run_id, cfg)
    record = judge_run(
        tracker,
        tracker.load_run(ref.run_id),
        model_name=candidate.model_name,
        cfg=cfg,
        version=candidate.version,
        variant=candidate.variant,
    )
    if candidate.variant:
        record = replace(record, candidate={**record.candidate, "variant": candidate.variant})
    log_gate(tracker, ref.run_id, record)
    registry = ModelRegistry(tracker)
    name, version = candidate.model_name, candidate.version
    tags: dict[str, str] = {RELEASE_VERDICT: record.verdict}
    if record.verdict != "pass" and _alias_version(registry, name, CHAMPION) != version:
        # rejected: tagged and described so in the registry, and no longer `candidate`
        tags[STATUS_TAG] = REJECTED
        if _alias_version(registry, name, CANDIDATE) == version:
            registry.delete_alias(name, CANDIDATE)
        registry.describe_version(
            name, version, f"Rejected by the release gate on {record.decided_at[:10]}: {record.summary()}"[:5000]
        )
    else:
        registry.describe_version(
            name, version, f"Passed the release gate on {record.decided_at[:10]}: {record.summary()}"[:5000]
        )
    registry.set_version_tags(name, version, tags)
    if record.verdict != "pass":
        tracker.parent(ref).set_tags(
            {OUTCOME_TAG: f"{candidate.model_name} v{candidate.version} not promoted: {record.summary()}"[:5000]}
        )
    return _outcome(record)


def _said(version: str | None) -> str:
    return f"v{version}" if version else "no champion"


def promote(candidate: Candidate, expected_champion: str | None, *, on_undo: Callable[[Undo], None]) -> str:
    """Point `champion` at `candidate` (which leaves `candidate`); refuses when `champion` moved
    since the gate judged against `expected_champion`. `on_undo` gets the `Promotion` before the
    registry changes. Returns the new champion's version."""
    tracker = Tracker(candidate.uri)
    registry = ModelRegistry(tracker)
    name, version = candidate.model_name, candidate.version
    current = _alias_version(registry, name, CHAMPION)
    if current != expected_champion:
        raise TrackingError(
            f"champion of {name!r} changed ({_said(expected_champion)} -> {_said(current)}) while v{version} was "
            f"being gated; run `auditflow promote {candidate.run_id}` to gate it again"
        )
    had_candidate = _alias_version(registry, name, CANDIDATE) == version
    status = registry.version(name, version).tags.get(STATUS_TAG)
    on_undo(Promotion(candidate.uri, name, version, version if had_candidate else None, current, status))
    registry.set_alias(name, CHAMPION, version)
    if had_candidate:
        registry.delete_alias(name, CANDIDATE)
    registry.set_version_tags(name, version, {STATUS_TAG: CHAMPION})
    if current and current != version:
        registry.set_version_tags(name, current, {STATUS_TAG: RETIRED})
    RunLogger(tracker.client, candidate.run_id).set_tags(
        {OUTCOME_TAG: f"champion: {name} v{version}" + (f" (replaced v{current})" if current else "")}
    )
    return version


def release_result(candidate: Candidate, outcome: GateOutcome, *, promoted: bool) -> ReleaseResult:
    return ReleaseResult(
        model_name=candidate.model_name,
        version=candidate.version,
        verdict=outcome.verdict,
        promoted=promoted,
        champion_version=candidate.version if promoted else outcome.champion_version,
        previous_champion=outcome.champion_version,
        summary=outcome.summary,
        reasons=outcome.reasons,
        markdown=outcome.markdown,
        variant=candidate.variant,
    )


# ---------------------------------------------------------------------------- the CLI's services
def gate_config(record: RunRecord | None, overrides: list[str] | tuple[str, ...] = ()) -> GateConfig:
    """The release policy run `record` was configured with (defaults where it recorded none or
    without a run), with `release.field=value` overrides applied; `ConfigError` naming a bad field."""
    recorded = record.config.get("release") if record is not None else None
    raw: dict[str, Any] = {"release": dict(recorded or {})}
    for override in overrides:
        if not override.strip().startswith("release."):
            raise ConfigError(f"--set {override!r}: gate and promote take only release.* overrides")
        apply_override(raw, override)
    try:
        return GateConfig.model_validate(raw["release"])
    except ValidationError as err:
        fields = "; ".join(f"release.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid release configuration: {fields}") from err


def _load(uri: str, run_id: str, overrides: list[str] | tuple[str, ...]) -> tuple[Tracker, RunRecord, GateConfig]:
    gate_config(None, overrides)  # a bad override fails before any store access
    tracker = Tracker(uri)
    record = tracker.load_run(run_id)
    return tracker, record, gate_config(record, overrides)


def gate_run(
    uri: str, run_id: str, overrides: list[str] | tuple[str, ...] = (), *, log_record: bool = False
) -> GateOutcome:
    """`auditflow gate RUN_ID`: judge a past pipeline run against the current champion; moves
    no alias. With `log_record`, the record replaces the run's `release/gate.json`."""
    tracker, record, cfg = _load(uri, run_id, overrides)
    name = _model_name(record, cfg.model_name)
    versions = _of_variant(ModelRegistry(tracker).versions(name, run_id), None)
    judged = judge_run(tracker, record, model_name=name, cfg=cfg, version=versions[0].version if versions else None)
    if log_record:
        log_gate(tracker, run_id, judged)
    return _outcome(judged)


def promote_run(
    uri: str,
    run_id: str,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    waive: list[str] | tuple[str, ...] = (),
    reason: str = "",
    by: str = "",
    variant: str | None = None,
) -> ReleaseResult:
    """`auditflow promote RUN_ID`: register the run's model if it has no version yet, gate it
    (logging the record) and move `champion` to it when it passes; an error after registration
    undoes every step. A run that fails the gate is not promoted (`promoted` False, `reasons`
    say why). `waive`: checks to accept first, with `reason`, as `by` (default: the login name).
    `variant` "adjusted": the run's logit-adjusted file, gated in the plain file's place."""
    _, record, cfg = _load(uri, run_id, overrides)
    waivers = record_waivers_of(uri, run_id, list(waive), reason=reason, by=by or getpass.getuser()) if waive else []
    ref = TrackingRef(uri=uri, experiment_id=record.experiment_id, run_id=run_id)
    with Rollback() as rollback:
        candidate = register(ref, model_name=cfg.model_name, set_candidate=False, on_undo=rollback.add, variant=variant)
        outcome = gate(ref, candidate, cfg)
        promoted = outcome.verdict == "pass"
        if promoted and outcome.champion_version != candidate.version:
            promote(candidate, outcome.champion_version, on_undo=rollback.add)
    return replace(release_result(candidate, outcome, promoted=promoted), waivers=tuple(waivers))


def rebuild_report(uri: str, run_id: str, out: Path) -> str:
    """Rebuild run `run_id`'s report into `out` after its waivers changed; one line: where it is,
    or why it could not be rebuilt (the release decision stands either way)."""
    from auditflow.audits.report import build_report

    try:
        files = build_report(Tracker(uri).load_run(run_id), out)
    except Exception as err:  # a run too old or too partial to render: say so, do not undo the release
        return f"report not rebuilt ({type(err).__name__}: {err}); `auditflow report {run_id}` tries again"
    return f"report with the sign-off block: {files.html}"


def list_models(uri: str, model_name: str | None = None) -> dict[str, list[VersionRow]]:
    """`auditflow models`: registered model -> its versions, newest first, with aliases, status
    and verdict tags, and the run's verdicts and headline metrics."""
    registry = ModelRegistry(Tracker(uri))
    found = [model_name] if model_name else registry.model_names()
    metrics = (METRICS["accuracy"], METRICS["worst_class_recall"])
    return {name: registry.list_versions(name, metrics) for name in found}
