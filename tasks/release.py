"""Stage 8 (before the report): register the run's model, gate it, promote it when it passes.

`release(ref, cfg)` is the flow's step: inside one Prefect transaction, the tasks below call the
release services (`auditflow.audits.release`: register, gate, promote). Each task keeps its
step's undo record in the transaction; on an exception after registration the transaction rolls
back and each task's on_rollback hook calls that record's `undo()`, the same undo the CLI's
`Rollback` runs: `champion` and `candidate` point where they pointed before, and a version
registered in the transaction keeps no alias and is tagged `release/status=rolled_back`.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction, transaction

from auditflow.audits import release as services
from auditflow.audits.gate import GateConfig
from auditflow.audits.release import Candidate, GateOutcome, ReleaseResult, Undo
from auditflow.core.tracking import TrackingRef

# What each task stores in its transaction for its rollback hook.
_REGISTERED = "auditflow.release.registered"
_PROMOTED = "auditflow.release.promoted"


def _keep(key: str) -> Callable[[Undo], None]:
    """An `on_undo` that stores the step's undo record in the current transaction."""

    def keep(step: Undo) -> None:
        txn = get_transaction()
        if txn is not None:
            txn.set(key, step)

    return keep


def _undo(txn: Transaction, key: str) -> None:
    step: Undo | None = txn.get(key, None)
    if step is not None:
        step.undo()


@task(name="register-candidate", cache_policy=NO_CACHE)
def register_candidate(ref: TrackingRef, model_name: str | None = None, set_candidate: bool = True) -> Candidate:
    """A registry version of the ONNX model run `ref` exported, aliased `candidate` when `set_candidate`."""
    return services.register(ref, model_name=model_name, set_candidate=set_candidate, on_undo=_keep(_REGISTERED))


@register_candidate.on_rollback
def _withdraw_candidate(txn: Transaction) -> None:
    """Undo `register_candidate` (`Registration.undo`)."""
    _undo(txn, _REGISTERED)


@task(name="gate-candidate", cache_policy=NO_CACHE)
def gate_candidate(ref: TrackingRef, candidate: Candidate, cfg: GateConfig) -> GateOutcome:
    """Judge run `ref` against the policy and the champion; log the record and the verdict."""
    return services.gate(ref, candidate, cfg)


@task(name="promote-champion", cache_policy=NO_CACHE)
def promote_champion(candidate: Candidate, expected_champion: str | None) -> str:
    """Point `champion` at `candidate`; returns the new champion's version."""
    return services.promote(candidate, expected_champion, on_undo=_keep(_PROMOTED))


@promote_champion.on_rollback
def _restore_champion(txn: Transaction) -> None:
    """Undo `promote_champion` (`Promotion.undo`)."""
    _undo(txn, _PROMOTED)


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
    return services.release_result(candidate, outcome, promoted=promoted)
