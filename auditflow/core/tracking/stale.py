"""Runs left RUNNING by a process that is gone, and ending runs from outside their own code.

Every run records the process that opened it (`owner_tags`: host, pid and the pid's start
time, set by `Tracker.start_run`). A run still RUNNING whose process has ended on this host
(SIGKILL, out-of-memory kill, power loss) is marked KILLED by the next start
(`end_stale_runs`, called by `open_pipeline_run`). `end_flow_run_runs` ends the runs of a
Prefect flow run that crashed or was cancelled, and `end_own_runs` those of this process when
it is stopped from outside its own code (its orchestrator died).

Re-exported by `auditflow.core.tracking`; import from there.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditflow.core.tracking import Tracker

log = logging.getLogger(__name__)

# Ownership of a run: the process that opened it. A run still RUNNING whose process is gone
# (SIGKILL, power loss, out-of-memory kill) is marked KILLED by the next start.
PID_TAG = "auditflow.pid"
PID_START_TAG = "auditflow.pid_start"  # the process's start time, so a reused pid is not taken for it
HOST_TAG = "auditflow.host"
END_REASON_TAG = "auditflow.end_reason"  # why a run was ended by someone other than its own code


def _process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, Linux `/proc`); "" when it is gone
    or there is no `/proc`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def owner_tags() -> dict[str, str]:
    """Which process owns a run: host, pid and the pid's start time."""
    return {HOST_TAG: platform.node(), PID_TAG: str(os.getpid()), PID_START_TAG: _process_start(os.getpid())}


def _owner_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process that opened a run still runs; None when that cannot be told here
    (another host, or a run opened before runs recorded their process)."""
    if tags.get(HOST_TAG) != platform.node() or not tags.get(PID_TAG, "").isdigit():
        return None
    pid = int(tags[PID_TAG])
    if Path("/proc/self/stat").exists():
        started = _process_start(pid)
        return bool(started) and started == (tags.get(PID_START_TAG) or started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def end_stale_runs(tracker: Tracker, experiment_id: str) -> list[str]:
    """Mark KILLED, with `END_REASON_TAG` saying why, every run of the experiment still
    RUNNING whose process (recorded at `start_run`) has ended on this host; the ids. Runs
    opened on other hosts, or before runs recorded their process, are left alone."""
    ended = []
    for run in tracker.client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    ):
        tags = dict(run.data.tags)
        if _owner_alive(tags) is not False:
            continue
        reason = (
            f"process {tags[PID_TAG]} on {tags[HOST_TAG]} ended without closing this run (killed: SIGKILL, out of "
            f"memory or power loss); marked KILLED by process {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        tracker.client.set_tag(run.info.run_id, END_REASON_TAG, reason)
        tracker.client.set_terminated(run.info.run_id, status="KILLED")
        log.warning("run %s (%s), left RUNNING by a killed process, is now KILLED", run.info.run_id, run.info.run_name)
        ended.append(run.info.run_id)
    return ended


def end_flow_run_runs(uri: str, experiment: str, flow_run_id: str, *, reason: str) -> list[str]:
    """Mark KILLED the pipeline run of Prefect flow run `flow_run_id` (in experiment
    `experiment`) and its stage runs that are still RUNNING, with `reason` (the crash or
    cancellation Prefect reported); the ids."""
    from auditflow.core.tracking import PARENT_TAG, Tracker, _quote  # the package imports this module

    tracker = Tracker(uri)
    exp = tracker.client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    ended = []
    found = tracker.client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{_quote(flow_run_id)}'"
    )
    for parent in found:
        children = tracker.client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}' and attributes.status = 'RUNNING'",
        )
        for run in [*children, *([parent] if parent.info.status == "RUNNING" else [])]:
            tracker.client.set_tag(run.info.run_id, END_REASON_TAG, reason[:5000])
            tracker.client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


def end_own_runs(uri: str, experiment: str, reason: str) -> list[str]:
    """Mark FAILED, with `reason`, the runs of `experiment` that this process opened and that
    are still RUNNING: for a run stopped from outside its own code (its orchestrator died); the ids."""
    from auditflow.core.tracking import Tracker  # the package imports this module

    tracker = Tracker(uri)
    exp = tracker.client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    found = tracker.client.search_runs(
        [exp.experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{PID_TAG}` = '{os.getpid()}'"
    )
    ended = []
    for run in (r for r in found if r.data.tags.get(HOST_TAG) == platform.node()):
        tracker.client.set_tag(run.info.run_id, "auditflow.error", reason[:5000])
        tracker.client.set_tag(run.info.run_id, END_REASON_TAG, reason[:5000])
        tracker.client.set_terminated(run.info.run_id, status="FAILED")
        ended.append(run.info.run_id)
    return ended
