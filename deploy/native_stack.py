"""The team stack of docker-compose.yml without Docker: Postgres, MLflow, Prefect and a worker.

    python deploy/native_stack.py up [--state DIR] [--no-deploy]   # Ctrl-C stops everything

Same settings as the compose file, from the same place: deploy/stack.env (ports, database
names, users, work pool, GPU slots) and the secrets in .env (see .env.example); a variable set
in the shell overrides both. Same services, as processes on loopback:

- Postgres from the distribution's packages (initdb in `<state>/postgres`, port POSTGRES_PORT),
  its databases created by deploy/postgres-init.sh, the script the postgres image runs;
- `mlflow server --app-name basic-auth` on MLFLOW_DB, users in MLFLOW_AUTH_DB, artifacts proxied
  by the server (`--serve-artifacts`) into `<state>/mlartifacts` (compose: the MinIO bucket);
- `prefect server start` on PREFECT_DB;
- the work pool AUDITFLOW_WORK_POOL with a concurrency limit of AUDITFLOW_GPU_SLOTS, the
  deployments of prefect.yaml, and `prefect worker start --with-healthcheck` on the pool.

prefect.yaml's parameters name the container's paths (/data, /var/lib/auditflow): on this host,
give a run its own, e.g. `prefect deployment run auditflow-pipeline/auditflow-nightly
--param data=PATH --param workdir=DIR`.

Each service is checked the way its compose healthcheck checks it. Every process runs in its
own process group and is stopped, with its children, when the stack stops or fails to start.
Postgres refuses to run as root: as root, it runs as the `postgres` user that the package creates.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlflow_auth  # this folder is not a package: compose mounts that file alone

REPO = Path(__file__).resolve().parents[1]
STACK_ENV = REPO / "deploy" / "stack.env"
SECRETS_EXAMPLE = REPO / ".env.example"
PREFECT_FILE = REPO / "prefect.yaml"
POSTGRES_INIT = REPO / "deploy" / "postgres-init.sh"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 300.0  # per service; MLflow takes 1-2 minutes to import on 2 busy cores
STOP_TIMEOUT_S = 20.0

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


SLOT_KEYS = ("AUDITFLOW_GPU_SLOTS", "AUDITFLOW_WORKER_SLOTS")  # flow runs at once: the pool's, one worker's


class StackError(RuntimeError):
    """A setting is missing or a service did not start."""


# --------------------------------------------------------------------------- settings


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as compose's --env-file reads them (comments, blank lines, optional
    quotes); ${KEY} references are left for `resolve` so later overrides reach them."""
    values: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise StackError(f"{path}:{number}: expected KEY=value, got {line!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def resolve(raw: Mapping[str, str]) -> dict[str, str]:
    """Expand ${KEY} references between settings (an unknown key is an error)."""
    out: dict[str, str] = {}

    def expand(key: str, seen: tuple[str, ...]) -> str:
        if key in out:
            return out[key]
        if key in seen:
            raise StackError(f"settings refer to each other in a cycle: {' -> '.join((*seen, key))}")
        if key not in raw:
            raise StackError(f"{seen[-1]} refers to ${{{key}}}, which no settings file defines")
        out[key] = _REF.sub(lambda m: expand(m.group(1), (*seen, key)), raw[key])
        return out[key]

    for key in raw:
        expand(key, ())
    return out


def secret_keys() -> list[str]:
    """The secrets the stack needs: the keys of .env.example."""
    return list(read_env_file(SECRETS_EXAMPLE))


def load_settings(
    env_file: Path | None = REPO / ".env",
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """deploy/stack.env, then the secrets file, then the shell (for keys the files know, and the
    secrets), then `overrides`; references resolved last, so an overridden port reaches every
    value built from it."""
    raw = read_env_file(STACK_ENV)
    if env_file is not None and Path(env_file).is_file():
        raw.update(read_env_file(env_file))
    known = set(raw) | set(secret_keys())
    raw.update({k: v for k, v in environ.items() if k in known})
    raw.update(overrides or {})
    settings = resolve(raw)
    missing = [k for k in secret_keys() if k != "MINIO_ROOT_PASSWORD" and not settings.get(k)]
    if missing:
        raise StackError(f"secrets not set: {', '.join(missing)} (copy .env.example to .env and fill it in)")
    for key in SLOT_KEYS:  # they reach `prefect` as arguments, which would fail later and less clearly
        if not re.fullmatch(r"[1-9][0-9]*", settings.get(key, "")):
            raise StackError(f"{key} must be a whole number of at least 1, got {settings.get(key, '')!r}")
    return settings


def prefect_deployments() -> list[dict]:
    import yaml

    return list(yaml.safe_load(PREFECT_FILE.read_text()).get("deployments") or [])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def postgres_bin_dir() -> Path:
    """The server binaries of the distribution's PostgreSQL (newest major version)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise StackError("PostgreSQL server binaries not found (Debian/Ubuntu: apt-get install postgresql)")
    return found[-1].parent


# --------------------------------------------------------------------------- processes


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log: Path
    healthy: Callable[[], bool]
    stop_signal: int = signal.SIGTERM

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _descendants(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:  # the process group still catches those that stayed in it
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _signal(pids: list[int], pgid: int | None, sig: int) -> None:
    if pgid is not None:
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def stop_service(service: Service, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop the service, its process group and any child that left the group (flow runs)."""
    proc = service.process
    children = _descendants(proc.pid)
    try:
        pgid = os.getpgid(proc.pid)
    except OSError:
        pgid = None
    if proc.poll() is None:
        _signal([proc.pid], None, service.stop_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
    _signal(children, pgid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in children):
        time.sleep(0.2)
    _signal([*children, proc.pid], pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def http_ok(url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --------------------------------------------------------------------------- the stack


@dataclass
class NativeStack:
    """The compose stack as local processes; a context manager that always stops what it started.

    `server_env` goes to the Prefect server and `worker_env` to the worker (the tests shorten
    Prefect's polling loops through them).
    """

    settings: dict[str, str]
    state: Path
    server_env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)

    # -- addresses
    @property
    def mlflow_url(self) -> str:
        return f"http://{LOOPBACK}:{self.settings['MLFLOW_PORT']}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.settings['PREFECT_PORT']}/api"

    def worker_health_port(self, index: int = 0) -> int:
        """Worker `index` serves /health on AUDITFLOW_WORKER_HEALTH_PORT + index."""
        return int(self.settings["AUDITFLOW_WORKER_HEALTH_PORT"]) + index

    def worker_health_url(self, index: int = 0) -> str:
        return f"http://{LOOPBACK}:{self.worker_health_port(index)}/health"

    def postgres_url(self, database: str, scheme: str = "postgresql+psycopg") -> str:
        s = self.settings
        return mlflow_auth.postgres_uri(
            s["POSTGRES_USER"], s["POSTGRES_PASSWORD"], LOOPBACK, s["POSTGRES_PORT"], database, scheme
        )

    # -- lifecycle
    def __enter__(self) -> NativeStack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def up(self, deploy: bool = True, workers: int = 1) -> NativeStack:
        """Start every service in compose's order, each once those it depends on are healthy."""
        try:
            self.start_postgres()
            # MLflow and Prefect need only Postgres (as in compose): both start at once
            mlflow, prefect = self.start_mlflow(wait=False), self.start_prefect(wait=False)
            self._wait_healthy(mlflow)
            mlflow_auth.ensure_users(self.mlflow_url, self.settings)
            self._wait_healthy(prefect)
            self.prepare_work_pool()
            if deploy:
                self.deploy()
            for index in range(workers):
                self.start_worker(index)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop in reverse order: worker (and its flow runs), Prefect, MLflow, Postgres. Every
        service gets its turn, even when stopping one of them fails."""
        errors = []
        while self.services:
            service = self.services.pop()
            try:
                stop_service(service)
            except Exception as err:  # stop the others first, then report
                errors.append(f"{service.name}: {err}")
        if errors:
            raise StackError(f"could not stop cleanly: {'; '.join(errors)}")

    def health(self) -> dict[str, bool]:
        return {s.name: s.process.poll() is None and s.healthy() for s in self.services}

    # -- helpers
    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("PREFECT_API_URL", "PREFECT_PROFILE", "MLFLOW_TRACKING_URI", "PGPASSFILE"):
            env.pop(key, None)
        # the venv's CLIs (prefect, mlflow) and Python for the flow-run processes come first
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PREFECT_HOME"] = str(self.state / "prefect-home")
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        env.update(extra or {})
        return env

    def _client_env(self) -> dict[str, str]:
        return self._env({"PREFECT_API_URL": self.prefect_api_url})

    def _launch(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        healthy: Callable[[], bool],
        stop_signal: int = signal.SIGTERM,
        wait: bool = True,
        **popen_kw,
    ) -> Service:
        log = self.state / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as handle:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stopped as a whole
                **popen_kw,
            )
        service = Service(name, proc, log, healthy, stop_signal)
        self.services.append(service)
        if wait:
            self._wait_healthy(service)
        return service

    def _wait_healthy(self, service: Service, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not service.healthy():
            if service.process.poll() is not None:
                raise StackError(
                    f"{service.name} exited with code {service.process.returncode}; "
                    f"its log ({service.log}) ends:\n{service.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{service.name} not healthy after {timeout_s:.0f} s; its log ({service.log}) ends:\n"
                    f"{service.log_tail()}"
                )
            time.sleep(0.5)

    def _run(self, cmd: list[str], env: dict[str, str], what: str, check: bool = True, **kw):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
        if check and result.returncode != 0:
            output = result.stdout[-3000:] + result.stderr[-3000:]
            raise StackError(f"{what} failed (exit {result.returncode}):\n{output}")
        return result

    def prefect(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The `prefect` CLI against this stack's server, from the repository root."""
        return self._run(["prefect", *args], self._client_env(), f"prefect {' '.join(args)}", check=check, cwd=REPO)

    # -- services
    def start_postgres(self) -> Service:
        s = self.settings
        bin_dir = postgres_bin_dir()
        data = self.state / "postgres"
        as_user: dict = {}
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")  # created by the distribution's package
            as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        if not (data / "PG_VERSION").is_file():
            data.mkdir(parents=True, exist_ok=True)
            pwfile = self.state / "postgres.pw"
            pwfile.write_text(s["POSTGRES_PASSWORD"] + "\n")
            pwfile.chmod(0o600)
            if as_user:
                os.chown(data, as_user["user"], as_user["group"])
                os.chown(pwfile, as_user["user"], as_user["group"])
            init = [str(bin_dir / "initdb"), "-D", str(data), "-U", s["POSTGRES_USER"], f"--pwfile={pwfile}"]
            init += ["--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions"]
            try:
                self._run(init, self._env(), "initdb (as root, the postgres user needs to reach --state)", **as_user)
            finally:
                pwfile.unlink(missing_ok=True)
        port = s["POSTGRES_PORT"]
        cmd = [str(bin_dir / "postgres"), "-D", str(data), "-p", port, "-c", f"listen_addresses={LOOPBACK}"]
        cmd += ["-c", f"unix_socket_directories={data}"]
        ready = [str(bin_dir / "pg_isready"), "-q", "-h", LOOPBACK, "-p", port, "-U", s["POSTGRES_USER"]]
        service = self._launch(
            "postgres",
            cmd,
            self._env(),
            lambda: subprocess.run(ready, stdin=subprocess.DEVNULL).returncode == 0,
            stop_signal=signal.SIGINT,  # "fast" shutdown
            **as_user,
        )
        env = self._env(
            {
                "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                "PGHOST": LOOPBACK,
                "PGPORT": port,
                "PGPASSWORD": s["POSTGRES_PASSWORD"],
                **{k: s[k] for k in ("POSTGRES_USER", "MLFLOW_DB", "MLFLOW_AUTH_DB", "PREFECT_DB")},
            }
        )
        self._run(["sh", str(POSTGRES_INIT)], env, "deploy/postgres-init.sh")
        return service

    # What each service runs, and with which settings: what tests/test_compose.py compares
    # with docker-compose.yml. Secrets stay in the environment, never on a command line.
    def mlflow_server(self) -> tuple[list[str], dict[str, str]]:
        s = self.settings
        cmd = ["mlflow", "server", "--app-name", "basic-auth", "--serve-artifacts"]
        cmd += ["--artifacts-destination", str(self.state / "mlartifacts"), "--host", LOOPBACK]
        cmd += ["--port", s["MLFLOW_PORT"], "--workers", s["MLFLOW_SERVER_WORKERS"]]
        cmd += ["--uvicorn-opts", s["MLFLOW_UVICORN_OPTS"]]
        cmd += ["--allowed-hosts", s["MLFLOW_ALLOWED_HOSTS"]]
        env = {
            "MLFLOW_BACKEND_STORE_URI": self.postgres_url(s["MLFLOW_DB"]),
            "MLFLOW_AUTH_CONFIG_PATH": str(self.state / "mlflow" / "basic_auth.ini"),
            **{k: s[k] for k in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")},
            "MLFLOW_FLASK_SERVER_SECRET_KEY": s["MLFLOW_FLASK_SERVER_SECRET_KEY"],
        }
        return cmd, env

    def mlflow_auth_config(self) -> tuple[str, str]:
        """(users' database URI, default permission) for deploy/mlflow_auth.py's config file."""
        s = self.settings
        return self.postgres_url(s["MLFLOW_AUTH_DB"]), s["MLFLOW_AUTH_DEFAULT_PERMISSION"]

    def prefect_server(self) -> tuple[list[str], dict[str, str]]:
        s = self.settings
        cmd = ["prefect", "server", "start", "--host", LOOPBACK, "--port", s["PREFECT_PORT"]]
        env = {
            "PREFECT_API_DATABASE_CONNECTION_URL": self.postgres_url(s["PREFECT_DB"], "postgresql+asyncpg"),
            "PREFECT_UI_API_URL": s["PREFECT_UI_API_URL"],
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        return cmd, env

    def work_pool_commands(self) -> tuple[list[str], list[str]]:
        """`prefect work-pool create` (when the pool is missing) and its concurrency limit."""
        s = self.settings
        pool = s["AUDITFLOW_WORK_POOL"]
        return (
            ["prefect", "work-pool", "create", pool, "--type", s["AUDITFLOW_WORK_POOL_TYPE"]],
            ["prefect", "work-pool", "set-concurrency-limit", pool, s["AUDITFLOW_GPU_SLOTS"]],
        )

    def worker(self, index: int = 0) -> tuple[list[str], dict[str, str]]:
        """Worker `index` (as on its own GPU host): it runs at most AUDITFLOW_WORKER_SLOTS flow
        runs at once, the pool at most AUDITFLOW_GPU_SLOTS across all its workers."""
        s = self.settings
        cmd = ["prefect", "worker", "start", "--pool", s["AUDITFLOW_WORK_POOL"]]
        cmd += ["--type", s["AUDITFLOW_WORK_POOL_TYPE"], "--limit", s["AUDITFLOW_WORKER_SLOTS"], "--with-healthcheck"]
        env = {
            "PREFECT_API_URL": self.prefect_api_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": s["MLFLOW_WORKER_USERNAME"],
            "MLFLOW_TRACKING_PASSWORD": s["MLFLOW_WORKER_PASSWORD"],
            # prefect.yaml's pull step changes into the code: here the checkout itself
            "AUDITFLOW_CODE_DIR": str(REPO),
            "PREFECT_WORKER_WEBSERVER_HOST": LOOPBACK,
            "PREFECT_WORKER_WEBSERVER_PORT": str(self.worker_health_port(index)),
            "PREFECT_LOGGING_EXTRA_LOGGERS": "auditflow,models,audits",
        }
        return cmd, env

    def start_mlflow(self, wait: bool = True) -> Service:
        """The tracking server; once healthy (unless `wait` is false) its worker and reviewer users."""
        cmd, env = self.mlflow_server()
        mlflow_auth.write_config(Path(env["MLFLOW_AUTH_CONFIG_PATH"]), *self.mlflow_auth_config())
        (self.state / "mlartifacts").mkdir(parents=True, exist_ok=True)
        service = self._launch(
            "mlflow", cmd, self._env(env), lambda: http_ok(f"{self.mlflow_url}/health"), wait=wait, cwd=self.state
        )
        if wait:
            mlflow_auth.ensure_users(self.mlflow_url, self.settings)
        return service

    def start_prefect(self, wait: bool = True) -> Service:
        cmd, env = self.prefect_server()
        env = self._env({**env, "PREFECT_HOME": str(self.state / "prefect-server-home"), **self.server_env})
        return self._launch(
            "prefect-server", cmd, env, lambda: http_ok(f"{self.prefect_api_url}/health"), wait=wait, cwd=self.state
        )

    def prepare_work_pool(self) -> None:
        """The pool prefect.yaml deploys to, limited to AUDITFLOW_GPU_SLOTS flow runs at once."""
        pool = self.settings["AUDITFLOW_WORK_POOL"]
        pools = {(d.get("work_pool") or {}).get("name") for d in prefect_deployments()}
        if pools != {pool}:
            raise StackError(f"prefect.yaml deploys to work pools {sorted(map(str, pools))}, stack.env says {pool!r}")
        create, limit = self.work_pool_commands()
        if self.prefect("work-pool", "inspect", pool, check=False).returncode != 0:
            self.prefect(*create[1:])
        self.prefect(*limit[1:])

    def deploy(self, *args: str) -> None:
        """`prefect deploy` from prefect.yaml: every deployment, or those `args` select
        (e.g. `--name auditflow-nightly --params '{...}' --cron '...'`)."""
        self.prefect("--no-prompt", "deploy", *(args or ("--all",)), "--prefect-file", str(PREFECT_FILE))

    def start_worker(self, index: int = 0) -> Service:
        cmd, env = self.worker(index)
        env = self._env({**env, **self.worker_env})
        name = "worker" if index == 0 else f"worker-{index}"
        return self._launch(name, cmd, env, lambda: http_ok(self.worker_health_url(index)), cwd=self.state)


# --------------------------------------------------------------------------- command line


def _reachable_by_postgres(path: Path) -> bool:
    """As root, Postgres runs as `postgres`, which needs to traverse every parent of its data."""
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack and keep it running until Ctrl-C")
    up.add_argument("--state", type=Path, help="folder for data and logs (default: a new temporary folder)")
    up.add_argument("--no-deploy", action="store_true", help="do not run `prefect deploy --all`")
    up.add_argument("--workers", type=int, default=1, help="workers on the pool (compose: --scale worker=N)")
    up.add_argument("--env-file", type=Path, default=REPO / ".env", help="secrets file (default: .env)")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(args.env_file)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    state = args.state or Path(tempfile.mkdtemp(prefix="auditflow-stack-"))
    state.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        state.chmod(state.stat().st_mode | 0o711)
        if not _reachable_by_postgres(state.resolve()):
            print(f"error: as root, Postgres runs as `postgres`, which cannot reach {state}; pick --state under /tmp")
            return 2
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the stack as Ctrl-C does
    with NativeStack(settings, state) as stack:
        try:
            stack.up(deploy=not args.no_deploy, workers=args.workers)
            print(f"MLflow   {stack.mlflow_url}  (sign in as {settings['MLFLOW_REVIEWER_USERNAME']} or the admin)")
            print(f"Prefect  {stack.prefect_api_url.removesuffix('/api')}")
            print(f"state and logs in {state}; Ctrl-C stops the stack")
            print(f"export PREFECT_API_URL={stack.prefect_api_url} MLFLOW_TRACKING_URI={stack.mlflow_url}", flush=True)
            while all(stack.health().values()):
                time.sleep(5)
            print(f"a service stopped: {stack.health()}; stopping the stack", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        except StackError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1


def random_secrets() -> dict[str, str]:
    """Throwaway values for every key of .env.example (tests, a one-off local stack)."""
    return {key: secrets.token_urlsafe(24) for key in secret_keys()}


if __name__ == "__main__":
    sys.exit(main())
