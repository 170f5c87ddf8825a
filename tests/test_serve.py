"""`auditflow serve` against a real Prefect server, as a user starts it: the cron deployment
exists, the server's scheduler starts a run (the ephemeral API never would), and that run
*finishes*: its parent run and every stage run read back FINISHED from MLflow, with the
reference models of the privacy audit trained inside it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
from conftest import user_env

from auditflow.core.tracking import Tracker

STAGES = {"ingest", "train", "evaluate", "fairness", "transparency", "privacy", "export", "benchmark"}
# The tutorial Net on toy data, with the reference tier on: a served run takes about a minute.
SERVED = [
    "train.epochs=1",
    "privacy.references=2",
    "privacy.reference_budget_s=null",
    "benchmark.batch_sizes=[1, 8]",
    "benchmark.iterations=3",
    "benchmark.warmup=1",
    "benchmark.min_seconds=0",
    "benchmark.max_seconds=1",
    "benchmark.backends=[torch-eager, onnx-fp32]",
    "export.variants=[fp32]",
    "export.parity_samples=16",
    "report.pdf=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> list | dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def _stop(proc: subprocess.Popen, port: int) -> bool:
    """SIGTERM to `auditflow serve`'s group; True when it exits by itself (Prefect's runner pauses
    the deployment, then serve stops the server it started). Otherwise SIGKILL it and the server
    (its own session, found by its port) so nothing outlives the test; False."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=90)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        subprocess.run(["pkill", "-f", f"server start --host 127.0.0.1 --port {port}"], check=False)
        return False


def _finished_parent(workdir: Path) -> tuple[Tracker, object] | None:
    """The first pipeline (parent) run in `workdir`'s store that ended, or None. Polled with
    plain read-only SQL: an MLflow client opened while the served run still creates the store
    would run MLflow's migrations beside it (seen: "table spans already exists")."""
    db = workdir / "mlflow.db"
    if not db.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
            ended = conn.execute(
                "SELECT run_uuid FROM runs r WHERE status != 'RUNNING' AND NOT EXISTS "
                "(SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId')"
            ).fetchall()
    except sqlite3.Error:
        return None  # being created
    if not ended:
        return None
    tracker = Tracker(f"sqlite:///{db}")
    return tracker, tracker.get_run(ended[0][0])


@pytest.mark.slow
def test_a_served_cron_run_finishes_with_every_stage(image_folder: Path, tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    workdir = tmp_path / "work"
    env = user_env()
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    args = ["serve", "--cron", "* * * * *", "--port", str(port), "--profile", "tutorial"]
    args += ["--data", str(image_folder), "--workdir", str(workdir), "--name", "minutely-test"]
    for override in SERVED:
        args += ["--set", override]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:  # the entry point a user types, not the function behind it
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("auditflow")), *args],
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deployment, ended = None, None
    try:
        # the server starts (~20 s), the next minute comes (<= 60 s), the run takes about a minute
        # idle and three or four beside three other test workers on two cores (CI: 286 s in all)
        deadline = time.monotonic() + 540
        while time.monotonic() < deadline and ended is None:
            assert proc.poll() is None, log.read_text()
            if deployment is None:
                try:
                    found = _post(f"{api}/deployments/filter", {"deployments": {"name": {"any_": ["minutely-test"]}}})
                    deployment = found[0] if found else None
                except OSError:
                    pass  # server still starting
            ended = _finished_parent(workdir)
            time.sleep(3)
    finally:
        stopped = _stop(proc, port)
    assert deployment is not None, "no deployment registered"
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["* * * * *"]
    assert deployment["parameters"]["data"] == str(image_folder)
    # one run at a time, the next queued: in CI (seen) minutely runs that overlapped shared two
    # loaded cores five ways and none ended within the bound
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert ended is not None, f"no scheduled run ended within the bound; serve's output:\n{log.read_text()[-4000:]}"
    tracker, parent = ended
    assert parent.info.status == "FINISHED", parent.data.tags.get("auditflow.error", log.read_text()[-4000:])
    assert parent.data.tags.get("prefect.flow_run_id")
    children = tracker.children(parent)
    assert set(children) == STAGES
    assert {name: c.info.status for name, c in children.items()} == dict.fromkeys(STAGES, "FINISHED")
    privacy = children["privacy"].data
    assert privacy.tags["privacy/tier"] == "reference"  # the reference-models subflow ran in the served run
    assert privacy.metrics["privacy/references/count"] == 2
    if not stopped:  # seen once under a loaded suite: Prefect's runner hung pausing deployments
        warnings.warn("serve did not stop within 90 s of SIGTERM; killed it and its server", stacklevel=1)
        return
    # the server the command started is gone with it
    time.sleep(1)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{api}/health", timeout=2)
