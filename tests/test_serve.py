"""`auditflow serve` against a real Prefect server: the cron deployment exists and the
server's scheduler creates runs for it (the ephemeral API never would)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> list | dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_serve_starts_a_server_and_schedules_runs(image_folder: Path, tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auditflow.cli",
            "serve",
            "--cron",
            "0 3 * * *",
            "--port",
            str(port),
            "--data",
            str(image_folder),
            "--workdir",
            str(tmp_path / "work"),
            "--name",
            "nightly-test",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deployment, runs = None, []
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not runs:
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            try:
                found = _post(f"{api}/deployments/filter", {"deployments": {"name": {"any_": ["nightly-test"]}}})
                if found:
                    deployment = found[0]
                    runs = _post(
                        f"{api}/flow_runs/filter",
                        {
                            "deployments": {"id": {"any_": [deployment["id"]]}},
                            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                        },
                    )
            except OSError:
                pass  # server still starting
            time.sleep(2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert deployment is not None, "no deployment registered"
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]
    assert deployment["parameters"]["data"] == str(image_folder)
    assert runs, "the server scheduled no runs"
    assert all(r["expected_start_time"].endswith(("T03:00:00Z", "T03:00:00+00:00")) for r in runs)
    # the server the command started is gone with it
    time.sleep(1)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{api}/health", timeout=2)
