"""Stage 8 (before the report): register the run's model, gate it, promote it when it passes.

`release(ref, cfg)` is the flow's step. Inside one Prefect transaction, `register_candidate`
adds a version of the ONNX model the export stage logged to the MLflow registry (alias
`candidate`), `gate_candidate` judges the run against the policy and against the version
aliased `champion` (`auditflow.audits.gate`) and logs the gate record to the pipeline run, and
`promote_champion` moves `champion` to the new version when the gate passed. A gate that fails
is an answer, not an error: the version stays `candidate`. An exception after registration
rolls the transaction back and each task's on_rollback hook undoes its own step: `champion`
and `candidate` point where they pointed before, and a version registered in the transaction
keeps no alias and is tagged `release/status=rolled_back` (kept, not deleted, as evidence).

The CLI (`auditflow gate | promote | models`) runs the same task bodies through `.fn`, as
`auditflow bench` does, so no Prefect API server starts; `promote_run` joins their rollback
hooks to its own transaction, so a promotion from the CLI rolls back the same way.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction, transaction
from pydantic import ValidationError

from auditflow.audits.gate import (
    METRICS,
    GateConfig,
    GateRecord,
    RunFacts,
    evaluate_gate,
    facts_from_record,
    gate_markdown,
)
from auditflow.core.config import apply_override, available_profiles
from auditflow.core.errors import ConfigError, TrackingError
from auditflow.core.tracking import VERDICT_PREFIX, RunLogger, RunRecord, Tracker, TrackingRef
from auditflow.core.tracking.registry import EXPORT_RUN_TAG, ModelRegistry, VersionRow

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
STATUS_TAG = "release/status"  # on a model version: candidate | rejected | champion | retired | rolled_back
OUTCOME_TAG = "release/outcome"  # on the pipeline run: what became of its version, in words
RELEASE_VERDICT = f"{VERDICT_PREFIX}release"  # on the run and its version: the gate's pass | fail
GATE_JSON = "release/gate.json"
GATE_MARKDOWN = "release/gate.md"
# What each task stores in its transaction for its rollback hook.
_REGISTERED = "auditflow.release.registered"
_PROMOTED = "auditflow.release.promoted"


@dataclass(frozen=True)
class Candidate:
    """A registered version of a run's model, passed between the release tasks."""

    uri: str
    model_name: str
    version: str
    run_id: str  # the pipeline (parent) run


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


@dataclass(frozen=True)
class _Undo:
    """What a rollback hook needs: the store, the version and where the aliases pointed."""

    uri: str
    run_id: str  # the pipeline run whose model `version` is
    model_name: str
    version: str
    created: bool  # registered in this transaction
    previous_candidate: str | None  # where `candidate` pointed before (promotion: the version, if it had it)
    previous_champion: str | None
    previous_status: str | None = None  # the version's `release/status` before


# ---------------------------------------------------------------------------- helpers
def _remember(key: str, value: Any) -> None:
    txn = get_transaction()
    if txn is not None:
        txn.set(key, value)


def _model_name(record: RunRecord, configured: str | None) -> str:
    """The registered model's name: configured, else the run's experiment name."""
    return configured or record.experiment_name or "auditflow"


def _exported_model(record: RunRecord) -> tuple[str, str]:
    """(model URI, export stage run id) of the ONNX model the run's export stage logged."""
    uri = (record.summaries.get("export") or {}).get("model_uri")
    if not uri or record.stage_status.get("export") != "FINISHED":
        raise TrackingError(
            f"run {record.run_id} has no finished export stage with a logged ONNX model to register; "
            + _way_to_a_model(record)
        )
    return uri, record.stage_run_ids["export"]


def _way_to_a_model(record: RunRecord) -> str:
    """Advice that leads somewhere: `auditflow bench` exports a run that finished training on a
    snapshot; a run that did not has nothing to export, and only a rerun of the pipeline helps."""
    trained = record.stage_status.get("train") == "FINISHED" and (record.summaries.get("ingest") or {}).get("snapshot")
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


def _alias_version(registry: ModelRegistry, name: str, alias: str) -> str | None:
    found = registry.by_alias(name, alias)
    return found.version if found else None


def _put_back(registry: ModelRegistry, name: str, alias: str, version: str, previous: str | None) -> None:
    """If `alias` points at `version`, point it back at `previous` (or remove it)."""
    if _alias_version(registry, name, alias) != version or previous == version:
        return
    if previous:
        registry.set_alias(name, alias, previous)
    else:
        registry.delete_alias(name, alias)


def _champion_facts(tracker: Tracker, run_id: str, version: str) -> RunFacts:
    try:
        record = tracker.load_run(run_id)
    except TrackingError:  # a champion whose run left this store: nothing to compare with
        return RunFacts(run_id=run_id, metrics={}, tags={}, overall=None, test_split="", version=version)
    return facts_from_record(record, version=version)


def judge_run(tracker: Tracker, record: RunRecord, model_name: str, cfg: GateConfig, version: str | None) -> GateRecord:
    """The gate record of pipeline run `record` (model version `version`) against the version
    `champion` of `model_name` points at now."""
    registry = ModelRegistry(tracker)
    champion = registry.by_alias(model_name, CHAMPION)
    champion_facts = _champion_facts(tracker, champion.run_id, champion.version) if champion is not None else None
    return evaluate_gate(facts_from_record(record, version=version), champion_facts, cfg, model_name)


def _log_gate(tracker: Tracker, run_id: str, record: GateRecord) -> None:
    """The record as `release/gate.json` and `.md`, counts and champion deltas as `release/...`
    metrics, and `verdict/release` on the pipeline run."""
    parent = RunLogger(tracker.client, run_id)
    parent.log_dict(record.as_dict(), GATE_JSON)
    parent.log_text(gate_markdown(record), GATE_MARKDOWN)
    metrics = {
        f"release/criteria_{status}": float(sum(c.status == status for c in record.criteria))
        for status in ("pass", "fail", "inconclusive", "skipped")
    }
    if record.comparable:  # candidate minus champion, in the metric's unit (latency: a ratio)
        deltas = {c.group: (c.value, c.champion) for c in record.criteria if c.kind == "regression"}
        for group, name in (
            ("accuracy", "accuracy_vs_champion"),
            ("worst_class_recall", "worst_class_recall_vs_champion"),
            ("privacy", "privacy_tpr_vs_champion"),
        ):
            value, reference = deltas.get(group, (None, None))
            if isinstance(value, float) and isinstance(reference, float):
                metrics[f"release/{name}"] = value - reference
        value, reference = deltas.get("latency", (None, None))
        if isinstance(value, float) and isinstance(reference, float) and reference > 0:
            metrics["release/latency_ratio_vs_champion"] = value / reference
    parent.log_metrics(metrics)
    champion, version = record.champion, record.candidate["version"]
    parent.set_tags(
        {
            RELEASE_VERDICT: record.verdict,
            "release/summary": record.summary()[:5000],
            "release/model": f"{record.model_name} v{version}" if version else f"{record.model_name}, not registered",
            "release/champion": f"{record.model_name} v{champion['version']}" if champion else "none",
            "release/comparability": record.comparability,
        }
    )


def read_gate_record(uri: str, run_id: str) -> dict[str, Any] | None:
    """The gate record logged to pipeline run `run_id` (`release/gate.json`), or None when the
    run has none; for the report (render it with `auditflow.audits.gate.gate_markdown`)."""
    tracker = Tracker(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracker.client.download_artifacts(run_id, GATE_JSON, tmp)
        except Exception:  # no gate ran for this run
            return None
        return json.loads(Path(local).read_text())


# ---------------------------------------------------------------------------- tasks
@task(name="register-candidate", cache_policy=NO_CACHE)
def register_candidate(ref: TrackingRef, model_name: str | None = None, set_candidate: bool = True) -> Candidate:
    """A registry version of the ONNX model run `ref` exported (the run's existing version when
    it has one), aliased `candidate` when `set_candidate`."""
    tracker = Tracker(ref.uri)
    registry = ModelRegistry(tracker)
    record = tracker.load_run(ref.run_id)
    name = _model_name(record, model_name)
    model_uri, export_run = _exported_model(record)
    previous_candidate = _alias_version(registry, name, CANDIDATE)
    previous_champion = _alias_version(registry, name, CHAMPION)
    existing = registry.versions(name, ref.run_id)
    if existing:
        version, created = existing[0].version, False
    else:
        version = registry.register(name, ref.run_id, model_uri, {EXPORT_RUN_TAG: export_run}).version
        created = True
    undo = _Undo(
        uri=ref.uri,
        run_id=ref.run_id,
        model_name=name,
        version=version,
        created=created,
        previous_candidate=previous_candidate,
        previous_champion=previous_champion,
    )
    _remember(_REGISTERED, undo)
    if created:
        registry.set_version_tags(name, version, {STATUS_TAG: CANDIDATE})
    if set_candidate:
        registry.set_alias(name, CANDIDATE, version)
    tracker.parent(ref).set_tags({OUTCOME_TAG: f"registered as {name} v{version}"})
    return Candidate(ref.uri, name, version, ref.run_id)


@register_candidate.on_rollback
def _withdraw_candidate(txn: Transaction) -> None:
    """Undo `register_candidate`: `candidate` (and `champion`, should it point here) go back to
    the versions they pointed at; a version registered in this transaction is tagged rolled_back."""
    undo: _Undo | None = txn.get(_REGISTERED, None)
    if undo is None:
        return
    registry = ModelRegistry(Tracker(undo.uri))
    _put_back(registry, undo.model_name, CANDIDATE, undo.version, undo.previous_candidate)
    _put_back(registry, undo.model_name, CHAMPION, undo.version, undo.previous_champion)
    try:  # the aliases matter; tags that fail to land are only logged
        if undo.created:
            registry.set_version_tags(undo.model_name, undo.version, {STATUS_TAG: "rolled_back"})
        RunLogger(registry.client, undo.run_id).set_tags(
            {OUTCOME_TAG: f"release rolled back: {undo.model_name} v{undo.version} holds no alias"}
        )
    except Exception as err:  # a failing hook would stop the hooks after it
        log.warning("could not tag %s v%s as rolled back: %s", undo.model_name, undo.version, err)
    log.warning("release rolled back: %s v%s withdrawn", undo.model_name, undo.version)


@task(name="gate-candidate", cache_policy=NO_CACHE)
def gate_candidate(ref: TrackingRef, candidate: Candidate, cfg: GateConfig) -> GateOutcome:
    """Judge run `ref` (its model is `candidate`) against the policy and the champion; log the
    gate record to the run and the verdict to the version."""
    tracker = Tracker(ref.uri)
    record = judge_run(tracker, tracker.load_run(ref.run_id), candidate.model_name, cfg, candidate.version)
    _log_gate(tracker, ref.run_id, record)
    registry = ModelRegistry(tracker)
    tags: dict[str, str] = {RELEASE_VERDICT: record.verdict}
    if record.verdict != "pass" and _alias_version(registry, candidate.model_name, CHAMPION) != candidate.version:
        tags[STATUS_TAG] = "rejected"
    registry.set_version_tags(candidate.model_name, candidate.version, tags)
    if record.verdict != "pass":
        tracker.parent(ref).set_tags(
            {OUTCOME_TAG: f"{candidate.model_name} v{candidate.version} not promoted: {record.summary()}"[:5000]}
        )
    champion = record.champion
    return GateOutcome(
        verdict=record.verdict,
        summary=record.summary(),
        reasons=record.reasons,
        champion_version=champion["version"] if champion else None,
        markdown=gate_markdown(record),
    )


@task(name="promote-champion", cache_policy=NO_CACHE)
def promote_champion(candidate: Candidate, expected_champion: str | None) -> str:
    """Point `champion` at `candidate` (which leaves `candidate`); refuses when `champion` moved
    since the gate judged against `expected_champion`. Returns the new champion's version."""
    tracker = Tracker(candidate.uri)
    registry = ModelRegistry(tracker)
    name, version = candidate.model_name, candidate.version
    current = _alias_version(registry, name, CHAMPION)
    if current != expected_champion:

        def said(v: str | None) -> str:
            return f"v{v}" if v else "no champion"

        raise TrackingError(
            f"champion of {name!r} changed ({said(expected_champion)} -> {said(current)}) while v{version} was "
            f"being gated; run `auditflow promote {candidate.run_id}` to gate it again"
        )
    had_candidate = _alias_version(registry, name, CANDIDATE) == version
    status = registry.version(name, version).tags.get(STATUS_TAG)
    undo = _Undo(
        uri=candidate.uri,
        run_id=candidate.run_id,
        model_name=name,
        version=version,
        created=False,
        previous_candidate=version if had_candidate else None,
        previous_champion=current,
        previous_status=status,
    )
    _remember(_PROMOTED, undo)
    registry.set_alias(name, CHAMPION, version)
    if had_candidate:
        registry.delete_alias(name, CANDIDATE)
    registry.set_version_tags(name, version, {STATUS_TAG: CHAMPION})
    if current and current != version:
        registry.set_version_tags(name, current, {STATUS_TAG: "retired"})
    RunLogger(tracker.client, candidate.run_id).set_tags(
        {OUTCOME_TAG: f"champion: {name} v{version}" + (f" (replaced v{current})" if current else "")}
    )
    return version


@promote_champion.on_rollback
def _restore_champion(txn: Transaction) -> None:
    """Undo `promote_champion`: `champion` back on the previous version (or unset), `candidate`
    back on the version if it had it, and the status tags as they were."""
    undo: _Undo | None = txn.get(_PROMOTED, None)
    if undo is None:
        return
    registry = ModelRegistry(Tracker(undo.uri))
    _put_back(registry, undo.model_name, CHAMPION, undo.version, undo.previous_champion)
    if undo.previous_candidate and _alias_version(registry, undo.model_name, CANDIDATE) is None:
        registry.set_alias(undo.model_name, CANDIDATE, undo.previous_candidate)
    try:
        if undo.previous_status:
            registry.set_version_tags(undo.model_name, undo.version, {STATUS_TAG: undo.previous_status})
        if undo.previous_champion and undo.previous_champion != undo.version:
            registry.set_version_tags(undo.model_name, undo.previous_champion, {STATUS_TAG: CHAMPION})
    except Exception as err:  # a failing hook would stop the hooks after it
        log.warning("could not restore the status tags of %s: %s", undo.model_name, err)
    log.warning("release rolled back: champion of %s back on v%s", undo.model_name, undo.previous_champion)


# ---------------------------------------------------------------------------- the step and the CLI
def _result(candidate: Candidate, outcome: GateOutcome, promoted: bool) -> ReleaseResult:
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
    )


def release(ref: TrackingRef, cfg: GateConfig) -> ReleaseResult:
    """The flow's release step, after `benchmark` and before `report` (which can then show the
    gate): register, gate and, when the gate passes, promote, in one transaction that a failure
    after registration rolls back. A failing gate is not an error."""
    with transaction():
        candidate = register_candidate(ref, cfg.model_name)
        outcome = gate_candidate(ref, candidate, cfg)
        promoted = outcome.verdict == "pass"
        if promoted:
            promote_champion(candidate, outcome.champion_version)
    return _result(candidate, outcome, promoted)


def _direct(txn: Transaction, step: Any, *args: Any) -> Any:
    """Run task `step`'s body here (no Prefect API server), with its rollback hooks joined to
    `txn` as the task engine would join them."""
    hooks: list[Callable[[Transaction], None]] = step.on_rollback_hooks
    txn.on_rollback_hooks.extend(hooks)
    return step.fn(*args)


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


def gate_run(
    uri: str, run_id: str, overrides: list[str] | tuple[str, ...] = (), log_record: bool = False
) -> GateOutcome:
    """`auditflow gate RUN_ID`: judge a past pipeline run against the current champion; moves
    no alias. With `log_record`, the record replaces the run's `release/gate.json`."""
    gate_config(None, overrides)  # a bad override fails before any store access
    tracker = Tracker(uri)
    record = tracker.load_run(run_id)
    cfg = gate_config(record, overrides)
    name = _model_name(record, cfg.model_name)
    versions = ModelRegistry(tracker).versions(name, run_id)
    gate = judge_run(tracker, record, name, cfg, versions[0].version if versions else None)
    if log_record:
        _log_gate(tracker, run_id, gate)
    champion = gate.champion
    return GateOutcome(
        gate.verdict, gate.summary(), gate.reasons, champion["version"] if champion else None, gate_markdown(gate)
    )


def promote_run(uri: str, run_id: str, overrides: list[str] | tuple[str, ...] = ()) -> ReleaseResult:
    """`auditflow promote RUN_ID`: register the run's model if it has no version yet, gate it
    (logging the record) and move `champion` to it when it passes, in one transaction. A run that
    fails the gate is not promoted (`promoted` False, `reasons` say why)."""
    gate_config(None, overrides)  # a bad override fails before any store access
    tracker = Tracker(uri)
    record = tracker.load_run(run_id)
    cfg = gate_config(record, overrides)
    ref = TrackingRef(uri=uri, experiment_id=record.experiment_id, run_id=run_id)
    with transaction() as txn:
        candidate = _direct(txn, register_candidate, ref, cfg.model_name, False)
        outcome = _direct(txn, gate_candidate, ref, candidate, cfg)
        promoted = outcome.verdict == "pass"
        if promoted and outcome.champion_version != candidate.version:
            _direct(txn, promote_champion, candidate, outcome.champion_version)
    return _result(candidate, outcome, promoted)


def list_models(uri: str, model_name: str | None = None) -> dict[str, list[VersionRow]]:
    """`auditflow models`: registered model -> its versions, newest first, with aliases, status
    and verdict tags, and the run's verdicts and headline metrics."""
    registry = ModelRegistry(Tracker(uri))
    names = [model_name] if model_name else registry.model_names()
    metrics = (METRICS["accuracy"], METRICS["worst_class_recall"])
    return {name: registry.list_versions(name, metrics) for name in names}
