"""Comparing two pipeline runs in the store: their evidence read back from MLflow, the paired
comparison (`auditflow.audits.compare`) rendered to Markdown and HTML and logged on run B.

`auditflow compare RUN_A RUN_B` calls `compare_runs`; the release gate calls `paired_with`
(candidate = B against the champion = A) and decides its "vs champion" criteria on the result.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from auditflow.audits.compare import AttackScores, Comparison, RunEvidence, compare
from auditflow.audits.documents import render_document
from auditflow.audits.gate import TAGS, split_identity
from auditflow.core.errors import AuditflowError, DataError
from auditflow.core.names import VERDICT_PREFIX, Compare, Evaluate, Privacy, Stage
from auditflow.core.predictions import Predictions
from auditflow.core.tracking import RunLogger, RunRecord, Tracker

TEMPLATE = "compare.md.j2"
# the data.* params that fix the training split the audited members index (`make_splits`)
TRAIN_SPLIT_PARAMS = ("data.seed", "data.max_train_per_class", "data.val_fraction")


@dataclass(frozen=True)
class ComparisonFiles:
    """What `compare_runs` made: the comparison, its documents and where they were logged."""

    comparison: Comparison
    markdown: str
    html: str
    artifacts: tuple[str, ...]  # artifact paths on run B; () when not logged


def _download(tracker: Tracker, run_id: str, path: str, tmp: str) -> Path | None:
    try:
        return Path(tracker.client.download_artifacts(run_id, path, tmp))
    except Exception:  # MLflow raises its own and the transport's types; the caller says what is missing
        return None


def train_split_identity(record: RunRecord) -> str:
    """Identity of the training split the privacy audit's members index: the snapshot digest and
    the seeded caps and validation hold-out; "" when the run records no digest."""
    digest = record.tags.get(TAGS["data_digest"])
    if not digest:
        return ""
    return f"snapshot {digest}, " + ", ".join(f"{k}={record.params.get(k, '?')}" for k in TRAIN_SPLIT_PARAMS)


def run_evidence(tracker: Tracker, record: RunRecord) -> RunEvidence:
    """What a comparison reads of pipeline run `record`: its predictions (`evaluate/predictions.npz`),
    attack scores (`privacy/attack_scores.json`, when logged), verdicts and split identities.
    `DataError` naming the run when it has no predictions."""
    run_id = record.run_id
    evaluate_run = record.stage_run_ids.get(Stage.EVALUATE)
    with tempfile.TemporaryDirectory() as tmp:
        local = _download(tracker, evaluate_run, Evaluate.PREDICTIONS_NPZ, tmp) if evaluate_run else None
        if local is None:
            raise DataError(f"run {run_id} logged no {Evaluate.PREDICTIONS_NPZ}")
        predictions = Predictions.load(local)
        privacy_run = record.stage_run_ids.get(Stage.PRIVACY)
        found = _download(tracker, privacy_run, Privacy.ATTACK_SCORES_JSON, tmp) if privacy_run else None
        where = f"{Privacy.ATTACK_SCORES_JSON} of run {run_id}"
        scores = AttackScores.from_json(found.read_text(), where) if found else None
    classes = (record.summaries.get(Stage.EVALUATE) or {}).get("classes") or [
        str(k) for k in range(predictions.n_classes)
    ]
    return RunEvidence(
        run_id=run_id,
        test_split=split_identity(record.tags.get(TAGS["data_digest"]), record.params),
        train_split=train_split_identity(record),
        classes=tuple(classes),
        predictions=predictions,
        verdicts={k.removeprefix(VERDICT_PREFIX): v for k, v in record.tags.items() if k.startswith(VERDICT_PREFIX)},
        attack_scores=scores,
        attack_note="" if scores else f"no {Privacy.ATTACK_SCORES_JSON} (no privacy stage, or logged before it was)",
    )


def paired_with(tracker: Tracker, champion: RunRecord, candidate: RunRecord, *, confidence: float) -> Comparison | str:
    """Candidate (B) against champion (A) on the same images, or why there is no such comparison
    (the gate then judges the raw differences and says so)."""
    try:
        return compare(run_evidence(tracker, champion), run_evidence(tracker, candidate), confidence=confidence)
    except (AuditflowError, ValueError) as err:  # ValueError: evidence too small for a test (DeLong's 2 per side)
        return str(err)


def render(comparison: Comparison) -> tuple[str, str]:
    """(Markdown, standalone HTML) of a comparison."""
    title = f"auditflow compare {comparison.run_a} {comparison.run_b}"
    return render_document(TEMPLATE, comparison.as_dict(), title=title, figures={})


def compare_runs(uri: str, run_a: str, run_b: str, *, confidence: float = 0.95, log: bool = True) -> ComparisonFiles:
    """`auditflow compare RUN_A RUN_B`: run B against run A on the same test split, logged on run
    B as `compare/vs_<RUN_A>.md`, `.html` and `.json` (unless not `log`). `ComparisonRefused`
    (one line naming both runs and what differs) for runs on different test splits."""
    tracker = Tracker(uri)
    records = [tracker.load_run(run_id) for run_id in (run_a, run_b)]
    comparison = compare(*(run_evidence(tracker, r) for r in records), confidence=confidence)
    md, html = render(comparison)
    if not log:
        return ComparisonFiles(comparison, md, html, ())
    names = (Compare.MARKDOWN, Compare.HTML, Compare.JSON)
    paths = tuple(name.format(run=run_a) for name in names)
    run = RunLogger(tracker.client, run_b)
    run.log_text(md, paths[0])
    run.log_text(html, paths[1])
    run.log_dict(comparison.as_dict(), paths[2])
    return ComparisonFiles(comparison, md, html, paths)
