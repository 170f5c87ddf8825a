"""The team stack of docker-compose.yml, run for real without Docker (deploy/native_stack.py).

One stack for the module, from the settings both stacks read (deploy/stack.env; random secrets
in place of .env; free loopback ports): Postgres from the distribution's packages in a temporary
data folder, the MLflow server on it (basic auth, proxied artifacts), the Prefect server on it,
the work pool with its GPU concurrency limit, the deployment from prefect.yaml and a process
worker. The pipeline runs through the deployment on a tiny image folder: by its cron schedule,
and triggered twice at once to show that the pool's GPU slot queues the second run. Results are
read back from the MLflow server over HTTP with the reviewer's account.

About 6-8 minutes on 2 busy CPU cores: the stack starts in about 1-2 minutes and each of the three
pipeline runs takes 1-2; the cron entry is armed before the GPU-slot test, so that its minute
comes while that test's two runs hold the slot, not while the suite waits.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from auditflow.core.names import Train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("native_stack", REPO / "deploy" / "native_stack.py")
native_stack = importlib.util.module_from_spec(_spec)
sys.modules["native_stack"] = native_stack  # dataclasses look their module up by name
_spec.loader.exec_module(native_stack)

# The pipeline on the toy image folder in a few seconds of training (cf. tests/test_flow.py).
TINY = [
    "train.width=8",
    "train.epochs=4",
    "train.progressive_scale=null",  # 4 toy epochs learn more reliably at full size
    "train.batch_size=16",
    "train.lr=0.05",
    "train.precision=fp32",
    "train.compile=false",
    "train.ema_decay=null",
    "train.tta_translate=0",
    "data.val_fraction=0.125",
    "privacy.references=0",
    "export.parity_samples=16",
    "export.variants=[fp32]",
    "benchmark.batch_sizes=[1, 8]",
    "benchmark.iterations=3",
    "benchmark.warmup=1",
    "benchmark.backends=[torch-eager, onnx-fp32]",
    "report.pdf=false",
    "benchmark.min_seconds=0",
    "benchmark.max_seconds=1",
]
RUN_TIMEOUT_S = 900  # one run; generous for a loaded CI machine
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
DEPLOYMENT = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"][0]


# --------------------------------------------------------------------------- the stack


def _two_free_ports() -> int:
    """A free loopback port whose successor is free too."""
    while True:
        port = native_stack.free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


@pytest.fixture(scope="module")
def stack():
    try:
        native_stack.postgres_bin_dir()
    except native_stack.StackError as err:
        if os.environ.get("CI"):
            pytest.fail(f"{err}; .ci/run installs it")
        pytest.skip(str(err))
    ports = {key: str(native_stack.free_port()) for key in ("POSTGRES_PORT", "MLFLOW_PORT", "PREFECT_PORT")}
    ports["AUDITFLOW_WORKER_HEALTH_PORT"] = str(_two_free_ports())  # a second worker takes the next one
    # environ={}: the developer's shell does not leak into the test's settings
    settings = native_stack.load_settings(None, {**native_stack.random_secrets(), **ports}, environ={})
    state = Path(tempfile.mkdtemp(prefix="auditflow-stack-"))
    state.chmod(0o711)  # as root, Postgres runs as `postgres`, which must reach its data folder
    stack = native_stack.NativeStack(
        settings,
        state,
        # shorter polling loops than a team stack wants, so the tests wait less
        server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"},
        worker_env={"PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "5"},
    )
    try:
        with stack:
            started = time.monotonic()
            stack.up(deploy=False)
            print(f"native stack up in {time.monotonic() - started:.0f} s ({state})")
            yield stack
    finally:
        keep = REPO / "test-artifacts" / "native-stack-logs"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(state / "logs", keep, dirs_exist_ok=True)  # for a failed CI run
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def params(stack, image_folder: Path) -> dict:
    """The deployment's parameters for the tests: the toy images, a work folder in the stack's
    state, and the tiny overrides (a team deploys prefect.yaml's quick profile on CIFAR-10)."""
    return {"profile": "quick", "data": str(image_folder), "workdir": str(stack.state / "work"), "overrides": TINY}


@pytest.fixture(scope="module")
def deployment(stack, params) -> dict:
    """prefect.yaml's deployment, created with `prefect deploy` from the file."""
    stack.deploy("--name", DEPLOYMENT["name"], "--params", json.dumps(params))
    found = prefect(stack, "POST", "/deployments/filter", {"deployments": {"name": {"any_": [DEPLOYMENT["name"]]}}})
    assert len(found) == 1, found
    return found[0]


def prefect(stack, method: str, path: str, body: dict | None = None):
    response = httpx.request(method, stack.prefect_api_url + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def mlflow(stack, method: str, path: str, user: str = "reviewer", **kw) -> httpx.Response:
    """A request to the MLflow server as `user` (reviewer, worker, admin) or anonymous (None)."""
    s = stack.settings
    auth = {
        "reviewer": (s["MLFLOW_REVIEWER_USERNAME"], s["MLFLOW_REVIEWER_PASSWORD"]),
        "worker": (s["MLFLOW_WORKER_USERNAME"], s["MLFLOW_WORKER_PASSWORD"]),
        "admin": (s["MLFLOW_AUTH_ADMIN_USERNAME"], s["MLFLOW_AUTH_ADMIN_PASSWORD"]),
        None: None,
    }[user]
    return httpx.request(method, stack.mlflow_url + path, auth=auth, timeout=30, **kw)


def trigger(stack, deployment: dict, name: str, parameters: dict | None = None) -> str:
    """A run of the deployment, as `prefect deployment run` or the UI's Run button creates it."""
    body = {"name": name} | ({"parameters": parameters} if parameters else {})
    run = prefect(stack, "POST", f"/deployments/{deployment['id']}/create_flow_run", body)
    return run["id"]


def flow_run(stack, run_id: str) -> dict:
    return prefect(stack, "GET", f"/flow_runs/{run_id}")


def wait_for(stack, run_ids: list[str], timeout_s: float = RUN_TIMEOUT_S) -> tuple[dict[str, dict], int]:
    """Poll the runs until all are final; returns them and the most that were RUNNING at once."""
    deadline = time.monotonic() + timeout_s
    most_running = 0
    while True:
        runs = {i: flow_run(stack, i) for i in run_ids}
        most_running = max(most_running, sum(r["state_type"] == "RUNNING" for r in runs.values()))
        if all(r["state_type"] in TERMINAL for r in runs.values()):
            break
        assert time.monotonic() < deadline, f"runs not finished after {timeout_s} s: {_states(runs)}"
        time.sleep(1)
    failed = {i: r for i, r in runs.items() if r["state_type"] != "COMPLETED"}
    assert not failed, f"{_states(failed)}\n{_explain(stack, failed)}"
    return runs, most_running


def _states(runs: dict[str, dict]) -> dict[str, str]:
    return {r["name"]: f"{r['state_type']} {(r.get('state') or {}).get('message') or ''}" for r in runs.values()}


def _explain(stack, runs: dict[str, dict]) -> str:
    """The failed runs' own logs and the worker's, for the assertion message."""
    lines = []
    for run_id in runs:
        logs = prefect(stack, "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        lines += [log["message"][-2000:] for log in logs[-30:]]
    worker = next(s for s in stack.services if s.name == "worker")
    return "\n".join(lines) + "\n--- worker log:\n" + worker.log_tail(60)


def parent_run(stack, flow_run_id: str) -> dict:
    """The pipeline's parent MLflow run for a Prefect flow run, found as a reviewer would: by
    the `prefect.flow_run_id` tag, through the server's REST API."""
    by_name = {"experiment_name": "auditflow"}
    experiment = mlflow(stack, "GET", "/api/2.0/mlflow/experiments/get-by-name", params=by_name)
    assert experiment.status_code == 200, experiment.text
    body = {
        "experiment_ids": [experiment.json()["experiment"]["experiment_id"]],
        "filter": f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
    }
    found = mlflow(stack, "POST", "/api/2.0/mlflow/runs/search", json=body).json().get("runs", [])
    parents = [r for r in found if "mlflow.parentRunId" not in _tags(r)]
    assert len(parents) == 1, f"{len(parents)} parent runs for flow run {flow_run_id}"
    return parents[0]


def stage_runs(stack, parent: dict) -> dict[str, dict]:
    body = {
        "experiment_ids": [parent["info"]["experiment_id"]],
        "filter": f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'",
    }
    found = mlflow(stack, "POST", "/api/2.0/mlflow/runs/search", json=body).json().get("runs", [])
    return {_tags(r).get("auditflow.stage", r["info"]["run_name"]): r for r in found}


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def sql(stack, database: str, query: str, *args):
    """One value from the stack's Postgres: proof that the servers store there."""
    import psycopg

    with psycopg.connect(stack.postgres_url(database, scheme="postgresql")) as conn:
        row = conn.execute(query, args).fetchone()
    return row[0] if row else None


# --------------------------------------------------------------------------- tests


def test_every_service_is_healthy_and_listens_on_loopback(stack):
    """The compose healthchecks' probes (pg_isready, /health, /api/health, the worker's
    /health) answer; nothing listens beyond 127.0.0.1."""
    assert stack.health() == {"postgres": True, "mlflow": True, "prefect-server": True, "worker": True}
    for url in (stack.mlflow_url, stack.prefect_api_url, stack.worker_health_url()):
        assert url.startswith("http://127.0.0.1:"), url
    assert sql(stack, "postgres", "SHOW listen_addresses") == "127.0.0.1"


def test_deployment_comes_from_prefect_yaml(stack, deployment, params):
    pool = stack.settings["AUDITFLOW_WORK_POOL"]
    assert deployment["entrypoint"] == DEPLOYMENT["entrypoint"]
    assert deployment["work_pool_name"] == DEPLOYMENT["work_pool"]["name"] == pool
    assert set(deployment["tags"]) == set(DEPLOYMENT["tags"])
    assert deployment["parameters"] == params
    assert deployment["pull_steps"] == yaml.safe_load((REPO / "prefect.yaml").read_text())["pull"]
    schedules = prefect(stack, "GET", f"/deployments/{deployment['id']}/schedules")
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in schedules] == [
        (s["cron"], s["timezone"]) for s in DEPLOYMENT["schedules"]
    ]
    work_pool = prefect(stack, "GET", f"/work_pools/{pool}")
    assert work_pool["type"] == stack.settings["AUDITFLOW_WORK_POOL_TYPE"]
    assert work_pool["concurrency_limit"] == int(stack.settings["AUDITFLOW_GPU_SLOTS"])


def assert_executed_by_the_worker_and_tracked_on_the_mlflow_server(stack, deployment, run: dict) -> None:
    """A triggered run as a reviewer sees it: executed by the pool's worker, every stage on the
    MLflow server (read with the reviewer's account), registered and gated."""
    run_id = run["id"]
    assert run["deployment_id"] == deployment["id"] and run["work_pool_name"] == stack.settings["AUDITFLOW_WORK_POOL"]
    assert run["infrastructure_pid"], "the process worker records the flow run's process"
    assert sql(stack, stack.settings["PREFECT_DB"], "SELECT state_type FROM flow_run WHERE id = %s", run_id) == (
        "COMPLETED"
    )

    # What a reviewer sees, through the MLflow server with the reviewer's (read-only) account.
    parent = parent_run(stack, run_id)
    info, tags, metrics = parent["info"], _tags(parent), _metrics(parent)
    assert info["status"] == "FINISHED"
    assert info["artifact_uri"].startswith("mlflow-artifacts:/"), "artifacts go through the server"
    assert tags["verdict/overall"] in {"pass", "fail", "inconclusive"}
    assert 0.0 <= metrics["evaluate/test_accuracy"] <= 1.0
    stages = stage_runs(stack, parent)
    assert {"ingest", "train", "evaluate", "fairness", "transparency", "privacy", "export", "benchmark"} <= set(stages)
    assert all(r["info"]["status"] == "FINISHED" for r in stages.values())
    history = mlflow(
        stack,
        "GET",
        "/api/2.0/mlflow/metrics/get-history",
        params={"run_id": stages["train"]["info"]["run_id"], "metric_key": "train/val_accuracy"},
    ).json()["metrics"]
    assert [m["step"] for m in history] == [1, 2, 3, 4]

    where = {"run_id": info["run_id"], "path": "report"}
    listing = mlflow(stack, "GET", "/api/2.0/mlflow/artifacts/list", params=where)
    files = {f["path"] for f in listing.json().get("files", [])}
    assert {"report/report.html", "report/report.md"} <= files, files
    report = mlflow(stack, "GET", "/get-artifact", params={"path": "report/report.md", "run_uuid": info["run_id"]})
    assert report.status_code == 200 and info["run_id"] in report.text and run_id in report.text
    # proxied: the file lives in the server's artifact store, not on the worker's side
    assert list((stack.state / "mlartifacts").rglob("report.md"))
    assert sql(stack, stack.settings["MLFLOW_DB"], "SELECT status FROM runs WHERE run_uuid = %s", info["run_id"]) == (
        "FINISHED"
    )

    # registered in the server's Model Registry and gated: toy data cannot state a TPR at 1% FPR,
    # so the gate fails the run: its version is rejected (no alias, tagged and described so),
    # with the record saying why
    name, _, number = tags["release/model"].rpartition(" v")  # "<registered model> v<version>"
    model = mlflow(stack, "GET", "/api/2.0/mlflow/registered-models/get", user="admin", params={"name": name})
    assert model.status_code == 200, model.text
    aliases = {a["alias"]: a["version"] for a in model.json()["registered_model"].get("aliases", [])}
    assert tags["verdict/release"] == "fail" and number not in aliases.values(), aliases
    version = mlflow(
        stack, "GET", "/api/2.0/mlflow/model-versions/get", user="admin", params={"name": name, "version": number}
    ).json()["model_version"]
    version_tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert version_tags["auditflow.run_id"] == info["run_id"] and version_tags["release/status"] == "rejected"
    assert version["description"].startswith("Rejected by the release gate on ")
    gate = mlflow(stack, "GET", "/get-artifact", params={"path": "release/gate.json", "run_uuid": info["run_id"]})
    assert gate.status_code == 200 and gate.json()["verdict"] == "fail" and gate.json()["reasons"], gate.text

    # basic auth is on: no credentials, no data; the worker's account created the experiment
    # (and manages it), the reviewer reads but cannot write
    for user, expected in (("WORKER", "MANAGE"), ("REVIEWER", "READ")):
        query = {
            "username": stack.settings[f"MLFLOW_{user}_USERNAME"],
            "resource_type": "experiment",
            "resource_id": info["experiment_id"],
        }
        permission = mlflow(stack, "GET", "/api/3.0/mlflow/users/permissions/get", user="admin", params=query)
        assert permission.status_code == 200 and permission.json()["permission"] == expected, permission.text
    assert mlflow(stack, "POST", "/api/2.0/mlflow/runs/search", user=None, json={}).status_code == 401
    tag = {"run_id": info["run_id"], "key": "reviewed", "value": "yes"}
    assert mlflow(stack, "POST", "/api/2.0/mlflow/runs/set-tag", json=tag).status_code == 403


@pytest.fixture(scope="module")
def cron_minute(stack, deployment, params):
    """The deployment again from prefect.yaml, with one more cron entry (`--cron`) that fires a
    minute or two from now, in place of waiting for 03:00. Armed before the GPU-slot test, so that
    its minute passes while that test's runs hold the slot (the run waits its turn) instead of
    the suite waiting for it."""
    now = dt.datetime.now(dt.UTC)
    at = (now + dt.timedelta(seconds=75)).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    cron = f"{at.minute} {at.hour} * * *"
    stack.deploy("--name", DEPLOYMENT["name"], "--params", json.dumps(params), "--cron", cron, "--timezone", "UTC")
    try:
        schedules = prefect(stack, "GET", f"/deployments/{deployment['id']}/schedules")
        assert {s["schedule"]["cron"] for s in schedules} == {DEPLOYMENT["schedules"][0]["cron"], cron}
        yield at
    finally:
        stack.deploy("--name", DEPLOYMENT["name"], "--params", json.dumps(params))  # prefect.yaml's schedule only


def test_gpu_slot_queues_the_second_of_two_triggered_runs_and_the_last_is_tracked_end_to_end(
    stack, deployment, cron_minute
):
    """Two runs triggered at once on a worker that would take both: the work pool's concurrency
    limit (AUDITFLOW_GPU_SLOTS = 1) keeps the second waiting until the first is done, so
    their train stages (read back from MLflow) never overlap."""
    assert int(stack.settings["AUDITFLOW_GPU_SLOTS"]) == 1
    first, second = trigger(stack, deployment, "gpu-queue-a"), trigger(stack, deployment, "gpu-queue-b")
    runs, most_running = wait_for(stack, [first, second], timeout_s=2 * RUN_TIMEOUT_S)
    assert most_running == 1
    # the one that ended last checked end to end (its version was the last registered; a
    # separate triggered run cost the suite 2 minutes)
    last = max(runs.values(), key=lambda r: dt.datetime.fromisoformat(r["end_time"]))
    assert_executed_by_the_worker_and_tracked_on_the_mlflow_server(stack, deployment, last)

    def window(start: str, end: str) -> tuple[dt.datetime, dt.datetime]:
        return dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)

    flow_windows = sorted(window(r["start_time"], r["end_time"]) for r in runs.values())
    assert flow_windows[0][1] <= flow_windows[1][0], f"flow runs overlap: {flow_windows}"
    created = max(dt.datetime.fromisoformat(r["created"]) for r in runs.values())
    assert created < flow_windows[0][1], "both runs were queued while the first one ran"

    train_windows = []
    for run_id in runs:
        train = stage_runs(stack, parent_run(stack, run_id))["train"]["info"]
        train_windows.append((int(train["start_time"]), int(train["end_time"])))  # ms since the epoch
    train_windows.sort()
    assert train_windows[0][1] <= train_windows[1][0], f"train stages overlap: {train_windows}"


def test_cron_schedule_starts_a_run(stack, deployment, cron_minute):
    """The cron entry armed by `cron_minute` fired: the scheduler created the run for its minute
    and the worker executed it, after the runs that held the GPU slot."""
    at = cron_minute
    deadline = time.monotonic() + max((at - dt.datetime.now(dt.UTC)).total_seconds(), 0) + RUN_TIMEOUT_S
    while True:
        found = prefect(
            stack,
            "POST",
            "/flow_runs/filter",
            {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"},
        )
        due = [r for r in found if r["auto_scheduled"] and dt.datetime.fromisoformat(r["expected_start_time"]) == at]
        if due and due[0]["state_type"] not in ("SCHEDULED", "PENDING"):
            break
        assert time.monotonic() < deadline, f"no run for {at:%H:%M} started: {_states({r['id']: r for r in found})}"
        time.sleep(2)
    run_id = due[0]["id"]
    runs, _ = wait_for(stack, [run_id])
    # the worker may start a run up to its prefetch (5 s here) before the scheduled time
    assert dt.datetime.fromisoformat(runs[run_id]["start_time"]) >= at - dt.timedelta(seconds=10)
    assert parent_run(stack, run_id)["info"]["status"] == "FINISHED"


def _worker_of(stack, flow_run: dict) -> str | None:
    """The stack service (worker) whose process started `flow_run`'s process, or None."""
    import psutil

    pid = (flow_run.get("infrastructure_pid") or "").rsplit(":", 1)[-1]
    workers = {s.process.pid: s.name for s in stack.services if s.name.startswith("worker")}
    try:
        return next((workers[p.pid] for p in psutil.Process(int(pid)).parents() if p.pid in workers), None)
    except (ValueError, psutil.Error):
        return None  # not started yet, or already ended


def test_two_workers_sharing_two_slots_run_two_triggered_runs_at_once_one_on_each(stack, deployment, params):
    """The parallel half of the GPU-slot test: a second worker on the pool (as on a second GPU
    host; AUDITFLOW_WORKER_SLOTS = 1 run each) and the pool's limit at 2 slots. Two runs
    triggered together run at the same time, each on its own worker, and both finish. Both
    train the same data and config (a seed no other test used): the later one waits for the
    first one's training and reuses it instead of training into the same checkpoints."""
    pool = stack.settings["AUDITFLOW_WORK_POOL"]
    assert stack.settings["AUDITFLOW_WORKER_SLOTS"] == "1"
    stack.prefect("work-pool", "set-concurrency-limit", pool, "2")
    stack.start_worker(1)
    try:
        same = params | {"overrides": [*TINY, "train.seed=7"]}
        ids = [trigger(stack, deployment, f"two-slots-{n}", same) for n in (1, 2)]
        ran_on: dict[str, str] = {}
        deadline = time.monotonic() + 2 * RUN_TIMEOUT_S
        while True:
            runs = {i: flow_run(stack, i) for i in ids}
            for i, r in runs.items():
                if r["state_type"] == "RUNNING" and i not in ran_on and (worker := _worker_of(stack, r)):
                    ran_on[i] = worker
            if all(r["state_type"] in TERMINAL for r in runs.values()):
                break
            assert time.monotonic() < deadline, f"runs not finished: {_states(runs)}"
            time.sleep(1)
        assert {r["state_type"] for r in runs.values()} == {"COMPLETED"}, _states(runs)
        print("flow run -> worker:", {runs[i]["name"]: w for i, w in ran_on.items()})  # NOTES.md
        assert sorted(ran_on.values()) == ["worker", "worker-1"], ran_on
        windows = sorted(
            (dt.datetime.fromisoformat(r["start_time"]), dt.datetime.fromisoformat(r["end_time"]))
            for r in runs.values()
        )
        assert windows[1][0] < windows[0][1], f"the two runs did not overlap: {windows}"
        trains = [stage_runs(stack, parent_run(stack, i))["train"] for i in ids]
        reused = [_tags(t)[Train.REUSED_FROM_RUN] for t in trains]  # "none" when it trained
        ran = [t["info"]["run_id"] for t in trains]
        assert "none" in reused and sorted(reused) == sorted(["none", ran[reused.index("none")]]), reused
    finally:
        stack.prefect("work-pool", "set-concurrency-limit", pool, stack.settings["AUDITFLOW_GPU_SLOTS"])
