"""Hyperparameter studies in the store: a study is one parent run, each trial a child run."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from auditflow.core.names import Tune
from auditflow.core.tracking import PARENT_TAG, STAGE_TAG, Tracker, TrackingRef

log = logging.getLogger(__name__)

# A study is one parent run; each trial a child run (stage tag `trial-N`). A profile written by
# `auditflow tune` is named `tuned:<study>:<study run id>`, which is how a pipeline run that used
# it finds its study again (`study_summary`).
TUNED_PREFIX = "tuned:"


def tuned_profile_name(study: str, run_id: str) -> str:
    """The `profile` field of a tuned profile: names the study and its MLflow run."""
    return f"{TUNED_PREFIX}{study}:{run_id}"


def resume_study_run(tracker: Tracker, run_id: str) -> TrackingRef | None:
    """Reopen study run `run_id` (RUNNING again) and end its trial runs a kill left RUNNING as
    KILLED; None when the store does not hold that run."""
    from mlflow.exceptions import MlflowException

    try:
        run = tracker.client.get_run(run_id)
    except MlflowException:
        return None
    ref = TrackingRef(uri=tracker.uri, experiment_id=run.info.experiment_id, run_id=run_id)
    for child in tracker.client.search_runs(
        [ref.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = 'RUNNING'"
    ):
        tracker.client.set_terminated(child.info.run_id, status="KILLED")
    tracker.client.update_run(run_id, status="RUNNING")
    return ref


def trial_runs(tracker: Tracker, ref: TrackingRef) -> list[Any]:
    """The trial runs of a study run, oldest first."""
    runs = tracker.client.search_runs(
        [ref.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{ref.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return [r for r in runs if r.data.tags.get(STAGE_TAG, "").startswith("trial-")]


def study_summary(tracker: Tracker, profile: str) -> dict[str, Any] | None:
    """For the report of a run whose profile `auditflow tune` wrote: the study's name, run id
    and link, and its `tune/summary.json` (objective, trials, chosen trial and its scores);
    None for other profiles or when the study run is not in this store."""
    if not profile.startswith(TUNED_PREFIX):
        return None
    study, _, run_id = profile.removeprefix(TUNED_PREFIX).rpartition(":")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run = tracker.client.get_run(run_id)
            summary = json.loads(Path(tracker.client.download_artifacts(run_id, Tune.SUMMARY_JSON, tmp)).read_text())
        except Exception:  # another store, or a study that never finished
            log.debug("study run %s of profile %s not found", run_id, profile)
            return None
    ref = TrackingRef(uri=tracker.uri, experiment_id=run.info.experiment_id, run_id=run_id)
    return {"study": study, "run_id": run_id, "url": tracker.run_url(ref), **summary}
