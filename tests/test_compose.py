"""Static checks of the team stack: docker-compose.yml, Dockerfile and prefect.yaml.

No Docker engine is needed (none runs where this project is developed): the files are parsed
with PyYAML and the wiring between services is checked the way Compose and the services
would resolve it. Variables are interpolated from deploy/stack.env and .env.example, i.e. the
stack as `docker compose --env-file deploy/stack.env --env-file .env up -d` starts it with the
example secrets. If a `docker compose` CLI is available, `docker compose config -q` also
validates the file against the Compose spec.

The native stack (deploy/native_stack.py, run for real by tests/test_stack.py) reads the same
settings file; the tests at the end check that both stacks start the same services with the
same settings (ports, database names, users, work pool and its limit, entrypoint).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
PREFECT_FILE = REPO / "prefect.yaml"
STACK_ENV = REPO / "deploy" / "stack.env"
SECRETS_EXAMPLE = REPO / ".env.example"

EXPECTED_SERVICES = {"postgres", "minio", "minio-init", "mlflow", "mlflow-users", "prefect-server", "worker", "deploy"}
ONE_SHOT = {"minio-init", "mlflow-users", "deploy"}  # run to completion: no healthcheck
AUTH_SCRIPT = "/opt/auditflow-deploy/mlflow_auth.py"  # deploy/mlflow_auth.py inside the MLflow image

_spec = importlib.util.spec_from_file_location("native_stack", REPO / "deploy" / "native_stack.py")
native_stack = importlib.util.module_from_spec(_spec)
sys.modules["native_stack"] = native_stack  # dataclasses look their module up by name
_spec.loader.exec_module(native_stack)
SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash"}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}

# --------------------------------------------------------------------------- helpers

_VAR_RE = re.compile(
    r"\$\$"  # escaped dollar
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def _interpolate_str(value: str, missing: list[str], env: dict[str, str]) -> str:
    """Resolve Compose interpolation from `env` (the --env-file values), then the defaults."""

    def repl(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op = m.group("op")
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return m.group("arg")
        missing.append(name)
        return ""

    return _VAR_RE.sub(repl, value)


def _interpolate(node, missing: list[str], env: dict[str, str]):
    if isinstance(node, str):
        return _interpolate_str(node, missing, env)
    if isinstance(node, list):
        return [_interpolate(v, missing, env) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate(v, missing, env) for k, v in node.items()}
    return node


def _variables(node) -> list[re.Match]:
    if isinstance(node, str):
        return [m for m in _VAR_RE.finditer(node) if m.group(0) != "$$"]
    if isinstance(node, list):
        return [m for v in node for m in _variables(v)]
    if isinstance(node, dict):
        return [m for v in node.values() for m in _variables(v)]
    return []


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    """What `docker compose --env-file deploy/stack.env --env-file .env.example` interpolates
    with, read by the native launcher's own reader (the shell left out)."""
    return native_stack.load_settings(SECRETS_EXAMPLE, environ={})


@pytest.fixture(scope="module")
def native(settings, tmp_path_factory) -> native_stack.NativeStack:
    """The native stack on the same settings, not started: what it would run."""
    return native_stack.NativeStack(settings, tmp_path_factory.mktemp("native-state"))


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    assert COMPOSE_FILE.is_file(), "docker-compose.yml is missing"
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def compose(raw_compose, settings) -> dict:
    missing: list[str] = []
    resolved = _interpolate(raw_compose, missing, settings)
    assert not missing, f"variables defined in neither deploy/stack.env nor .env.example: {sorted(set(missing))}"
    return resolved


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def prefect_cfg() -> dict:
    assert PREFECT_FILE.is_file(), "prefect.yaml is missing"
    data = yaml.safe_load(PREFECT_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def deployment(prefect_cfg) -> dict:
    deployments = prefect_cfg.get("deployments") or []
    by_name = {d.get("name"): d for d in deployments}
    assert "auditflow-nightly" in by_name, f"deployments in prefect.yaml: {list(by_name)}"
    return by_name["auditflow-nightly"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def _shell_tokens(script: str) -> list[str]:
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def command_tokens(service: dict) -> list[str]:
    """Tokens of what the container runs; shell scripts are tokenized like sh would."""
    cmd = service.get("command")
    entrypoint = service.get("entrypoint")
    if isinstance(entrypoint, str):
        entrypoint = shlex.split(entrypoint)
    if cmd is None:
        return []
    if isinstance(cmd, str):
        if entrypoint and entrypoint[0] in SHELLS and entrypoint[-1] == "-c":
            return _shell_tokens(cmd)
        return shlex.split(cmd)
    cmd = [str(c) for c in cmd]
    if len(cmd) >= 3 and cmd[0] in SHELLS and cmd[1] == "-c":
        return _shell_tokens(cmd[2])
    if entrypoint and entrypoint[0] in SHELLS and entrypoint[-1] == "-c" and cmd:
        return _shell_tokens(cmd[0])
    return cmd


def segments(tokens: list[str]) -> list[list[str]]:
    """Split shell tokens into simple commands (dropping a leading `exec`)."""
    out, cur = [], []
    for tok in tokens:
        if tok in SHELL_OPERATORS:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(tok)
    if cur:
        out.append(cur)
    return [s[1:] if s and s[0] == "exec" else s for s in out]


def find_segment(service: dict, *prefix: str) -> tuple[int, list[str]]:
    """Index and tokens of the first simple command starting with `prefix`.

    Global flags between the program and its subcommand are skipped, so
    `prefect --no-prompt deploy --all` matches the prefix ("prefect", "deploy").
    """
    for i, seg in enumerate(segments(command_tokens(service))):
        words = [seg[0]] + [t for t in seg[1:] if not t.startswith("-")] if seg else []
        if tuple(words[: len(prefix)]) == prefix:
            return i, seg
    raise AssertionError(f"no `{' '.join(prefix)}` command in {service.get('command')!r}")


def option(seg: list[str], *names: str) -> str | None:
    for i, tok in enumerate(seg):
        for name in names:
            if tok == name and i + 1 < len(seg):
                return seg[i + 1]
            if tok.startswith(name + "="):
                return tok.split("=", 1)[1]
    return None


def port_of(address: str | None, default: int) -> int:
    if not address:
        return default
    return int(str(address).rsplit(":", 1)[-1])


def mlflow_server(services) -> list[str]:
    return find_segment(services["mlflow"], "mlflow", "server")[1]


def mlflow_port(services) -> int:
    return int(option(mlflow_server(services), "--port", "-p") or 5000)


def prefect_port(services) -> int:
    seg = find_segment(services["prefect-server"], "prefect", "server", "start")[1]
    env = env_of(services["prefect-server"])
    return int(option(seg, "--port") or env.get("PREFECT_SERVER_API_PORT") or 4200)


def minio_ports(services) -> tuple[int, int]:
    tokens = command_tokens(services["minio"])
    return port_of(option(tokens, "--address"), 9000), port_of(option(tokens, "--console-address"), 9001)


def published(service: dict) -> dict[int, int]:
    """container port -> host port for the short and long `ports:` syntax."""
    out = {}
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out[int(entry["target"])] = int(entry.get("published", entry["target"]))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.split(":")
        container = int(parts[-1])
        host = int(parts[-2]) if len(parts) >= 2 else container
        out[container] = host
    return out


def depends_on(service: dict) -> dict[str, str]:
    dep = service.get("depends_on") or {}
    if isinstance(dep, list):
        return {name: "service_started" for name in dep}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in dep.items()}


def volume_entries(service: dict) -> list[tuple[str, str | None, str]]:
    """(type, source, target) for each `volumes:` entry of a service."""
    out = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            out.append((entry.get("type", "volume"), entry.get("source"), entry["target"]))
            continue
        parts = str(entry).split(":")
        if len(parts) == 1:
            out.append(("volume", None, parts[0]))  # anonymous volume
            continue
        source, target = parts[0], parts[1]
        kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
        out.append((kind, source, target))
    return out


def postgres_credentials(services) -> tuple[str, str]:
    env = env_of(services["postgres"])
    return env.get("POSTGRES_USER", "postgres"), env["POSTGRES_PASSWORD"]


def check_postgres_url(services, url: str, scheme: str, database: str) -> None:
    parts = urlsplit(url)
    assert parts.scheme == scheme, url
    assert parts.hostname == "postgres" and "postgres" in services, url
    assert parts.port in (None, 5432), url
    assert parts.path.lstrip("/") == database, url
    user, password = postgres_credentials(services)
    assert (parts.username, parts.password) == (user, password), (
        f"{url} does not use the postgres service's POSTGRES_USER/POSTGRES_PASSWORD"
    )


def allowed_by_mlflow(allowed: list[str], host_header: str) -> bool:
    # Same rule as mlflow.server.security_utils.is_allowed_host_header.
    if "*" in allowed:
        return True
    return any(fnmatch.fnmatch(host_header, a) if "*" in a else host_header == a for a in allowed)


def dockerfile_workdir(path: Path) -> str | None:
    workdir = None
    for line in path.read_text().splitlines():
        m = re.match(r"\s*WORKDIR\s+(\S+)", line, re.IGNORECASE)
        if m:
            workdir = m.group(1)
    return workdir


def dockerfile_of(service: dict) -> Path:
    build = service.get("build")
    assert build, "service has no build section"
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    ctx = (REPO / context).resolve()
    assert ctx.is_dir(), f"build context {ctx} does not exist"
    return ctx / dockerfile


def pull_directory(prefect_cfg: dict, deployment: dict) -> str | None:
    steps = deployment.get("pull") or prefect_cfg.get("pull") or []
    for step in steps:
        spec = step.get("prefect.deployments.steps.set_working_directory")
        if spec:
            return spec["directory"]
    return None


# --------------------------------------------------------------------------- compose structure


def test_expected_services_exist(services):
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"missing services: {sorted(missing)}"


def test_every_variable_comes_from_the_settings_files(raw_compose, compose):
    """One place for each value: no defaults in the compose file, every variable is a setting
    of deploy/stack.env or a secret of .env.example, and a missing secret stops compose."""
    stack_keys, secret_keys = set(native_stack.read_env_file(STACK_ENV)), set(native_stack.secret_keys())
    for m in _variables(raw_compose):
        name, op = m.group("braced") or m.group("bare"), m.group("op")
        assert op in (None, ":?"), f"${{{name}{op}...}}: the value belongs in deploy/stack.env, not a default"
        assert name in stack_keys | secret_keys, f"{name} is in neither deploy/stack.env nor .env.example"
        if name in secret_keys:
            assert op == ":?", f"secret {name} must be required (${{{name}:?...}}), so a missing .env stops compose"
    assert compose["x-settings"] == "deploy/stack.env"


def test_secrets_live_only_in_the_git_ignored_env_file():
    stack_keys, secret_keys = set(native_stack.read_env_file(STACK_ENV)), set(native_stack.secret_keys())
    assert not stack_keys & secret_keys, f"in both files: {sorted(stack_keys & secret_keys)}"
    leaked = [k for k in stack_keys if re.search(r"PASSWORD|SECRET|TOKEN", k)]
    assert not leaked, f"secrets in deploy/stack.env (it is committed): {leaked}"
    assert {"POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= secret_keys
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO).returncode
    assert ignored == 0, ".env must be git-ignored"
    assert subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=REPO).returncode == 1


def test_depends_on_targets_are_defined_services(services):
    for name, svc in services.items():
        for target in depends_on(svc):
            assert target in services, f"{name} depends on undefined service {target!r}"
            assert target != name, f"{name} depends on itself"


def test_depends_on_has_no_cycle(services):
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 1:
            raise AssertionError(f"dependency cycle: {' -> '.join(path + [name])}")
        if state.get(name) == 2:
            return
        state[name] = 1
        for target in depends_on(services[name]):
            if target in services:
                visit(target, path + [name])
        state[name] = 2

    for name in services:
        visit(name, [])


def test_conditions_point_at_services_that_can_meet_them(services):
    known = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for target, condition in depends_on(svc).items():
            assert condition in known, f"{name} -> {target}: unknown condition {condition!r}"
            if condition == "service_healthy":
                hc = services[target].get("healthcheck") or {}
                assert hc.get("test") and not hc.get("disable"), (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
                )
            if condition == "service_completed_successfully":
                restart = str(services[target].get("restart", "no"))
                assert restart in ("no", "on-failure") or restart.startswith("on-failure"), (
                    f"{name} waits for one-shot {target} to exit, but it has restart={restart}"
                )


def test_startup_order(services):
    assert depends_on(services["mlflow"]).get("postgres") == "service_healthy"
    assert depends_on(services["mlflow"]).get("minio-init") == "service_completed_successfully"
    assert depends_on(services["minio-init"]).get("minio") == "service_healthy"
    assert depends_on(services["mlflow-users"]).get("mlflow") == "service_healthy"
    assert depends_on(services["prefect-server"]).get("postgres") == "service_healthy"
    assert depends_on(services["worker"]).get("prefect-server") == "service_healthy"
    assert depends_on(services["worker"]).get("mlflow") == "service_healthy"
    assert depends_on(services["worker"]).get("mlflow-users") == "service_completed_successfully"
    assert depends_on(services["deploy"]).get("prefect-server") == "service_healthy"


def test_postgres_healthcheck_uses_pg_isready(services):
    test = services["postgres"]["healthcheck"]["test"]
    text = " ".join(test) if isinstance(test, list) else str(test)
    assert "pg_isready" in text


def test_named_volumes_are_declared_and_used(compose, services):
    declared = set((compose.get("volumes") or {}).keys())
    used = set()
    for name, svc in services.items():
        for kind, source, _target in volume_entries(svc):
            if kind == "volume" and source:
                assert source in declared, f"{name} uses undeclared named volume {source!r}"
                used.add(source)
            if kind == "bind" and source and source.startswith("./"):
                assert (REPO / source).exists(), f"{name} bind-mounts missing repo path {source}"
    assert not declared - used, f"declared but unused volumes: {sorted(declared - used)}"
    assert any(t == "/var/lib/postgresql/data" and k == "volume" for k, _, t in volume_entries(services["postgres"]))
    assert any(t == "/data" and k == "volume" for k, _, t in volume_entries(services["minio"]))


def test_published_ports(services, settings):
    assert not services["postgres"].get("ports"), "Postgres must not be published"
    api, console = minio_ports(services)
    assert (api, console) == (int(settings["MINIO_API_PORT"]), int(settings["MINIO_CONSOLE_PORT"]))
    assert published(services["minio"]).get(api) == api == 9000
    assert published(services["minio"]).get(console) == console == 9001
    assert published(services["mlflow"]).get(mlflow_port(services)) == int(settings["MLFLOW_PORT"]) == 5000
    assert published(services["prefect-server"]).get(prefect_port(services)) == int(settings["PREFECT_PORT"]) == 4200


def test_published_ports_bind_to_localhost_by_default(services, settings):
    assert settings["AUDITFLOW_BIND_ADDRESS"] == "127.0.0.1"
    for name, svc in services.items():
        for entry in svc.get("ports") or []:
            host_ip = entry.get("host_ip") if isinstance(entry, dict) else str(entry).split(":")[0]
            assert str(entry).count(":") == 2 or isinstance(entry, dict), f"{name} publishes {entry} on every address"
            assert host_ip == "127.0.0.1", f"{name} publishes {entry} beyond localhost"


def test_every_long_running_service_has_a_healthcheck(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert str(svc.get("restart", "no")) == "no", f"one-shot {name} must not restart"
            continue
        hc = svc.get("healthcheck") or {}
        assert hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"


def test_healthchecks_probe_the_listening_port(services, settings):
    for name, port in (
        ("mlflow", mlflow_port(services)),
        ("prefect-server", prefect_port(services)),
        ("worker", int(settings["AUDITFLOW_WORKER_HEALTH_PORT"])),
    ):
        test = services[name]["healthcheck"]["test"]
        text = " ".join(test) if isinstance(test, list) else str(test)
        assert f":{port}/" in text, f"{name} healthcheck does not probe port {port}: {text}"
    assert "/api/health" in " ".join(services["prefect-server"]["healthcheck"]["test"])
    _, start = find_segment(services["worker"], "prefect", "worker", "start")
    assert "--with-healthcheck" in start, "the worker serves /health only with --with-healthcheck"
    assert option(start, "--limit") == settings["AUDITFLOW_WORKER_SLOTS"], start  # its host's GPUs
    assert env_of(services["worker"])["PREFECT_WORKER_WEBSERVER_PORT"] == settings["AUDITFLOW_WORKER_HEALTH_PORT"]


# --------------------------------------------------------------------------- databases


def test_postgres_creates_the_stack_databases(services, settings):
    """The image creates POSTGRES_DB; the init script, the one the native stack runs too,
    creates every database named in its environment."""
    env = env_of(services["postgres"])
    scripts = [
        source
        for kind, source, target in volume_entries(services["postgres"])
        if kind == "bind" and target.startswith("/docker-entrypoint-initdb.d/")
    ]
    assert len(scripts) == 1 and (REPO / scripts[0]).resolve() == native_stack.POSTGRES_INIT, scripts
    script = native_stack.POSTGRES_INIT.read_text()
    names = ("MLFLOW_DB", "MLFLOW_AUTH_DB", "PREFECT_DB")
    assert re.search(r'for db in "\$MLFLOW_DB" "\$MLFLOW_AUTH_DB" "\$PREFECT_DB"', script)
    assert "CREATE DATABASE" in script
    assert {k: env[k] for k in names} == {k: settings[k] for k in names}
    assert env["POSTGRES_DB"] == settings["MLFLOW_DB"]

    mlflow_db = urlsplit(option(mlflow_server(services), "--backend-store-uri")).path.lstrip("/")
    prefect_db = urlsplit(env_of(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]).path.lstrip("/")
    assert (mlflow_db, prefect_db) == (settings["MLFLOW_DB"], settings["PREFECT_DB"]) == ("mlflow", "prefect")


def test_mlflow_backend_store_is_postgres(services):
    seg = mlflow_server(services)
    uri = option(seg, "--backend-store-uri")
    assert uri, "mlflow server has no --backend-store-uri"
    check_postgres_url(services, uri, urlsplit(uri).scheme, "mlflow")
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the scheme says so explicitly
    assert urlsplit(uri).scheme == "postgresql+psycopg"


def test_mlflow_installs_its_drivers_before_starting(services):
    server_idx, _ = find_segment(services["mlflow"], "mlflow", "server")
    pip_idx, pip = find_segment(services["mlflow"], "pip", "install")
    assert pip_idx < server_idx
    names = {re.split(r"[\[<>=]", p)[0].lower() for p in pip[2:] if not p.startswith("-")}
    assert {"psycopg", "boto3", "flask-wtf"} <= names, names  # driver, S3, basic auth's CSRF
    assert services["mlflow"]["image"] == "ghcr.io/mlflow/mlflow:v3.17.0"
    assert services["mlflow-users"]["image"] == services["mlflow"]["image"]


def test_mlflow_basic_auth_is_on(services, settings):
    seg = mlflow_server(services)
    assert option(seg, "--app-name") == "basic-auth"
    env = env_of(services["mlflow"])
    config_idx, config = find_segment(services["mlflow"], "python", AUTH_SCRIPT)
    assert config_idx < find_segment(services["mlflow"], "mlflow", "server")[0]
    assert config[2:] == ["config", env["MLFLOW_AUTH_CONFIG_PATH"]]
    assert env["MLFLOW_AUTH_DB"] == settings["MLFLOW_AUTH_DB"]
    assert env["MLFLOW_AUTH_DEFAULT_PERMISSION"] == settings["MLFLOW_AUTH_DEFAULT_PERMISSION"] == "READ"
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == settings["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] and env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    for name in ("mlflow", "mlflow-users"):
        mounts = {t: s for _, s, t in volume_entries(services[name])}
        assert mounts.get(AUTH_SCRIPT) == "./deploy/mlflow_auth.py", f"{name} mounts {mounts}"
    users = command_tokens(services["mlflow-users"])
    assert users[-2:] == ["users", f"http://mlflow:{mlflow_port(services)}"]
    users_env = env_of(services["mlflow-users"])
    for role in ("WORKER", "REVIEWER"):
        assert users_env[f"MLFLOW_{role}_USERNAME"] == settings[f"MLFLOW_{role}_USERNAME"]
    worker_env = env_of(services["worker"])
    assert worker_env["MLFLOW_TRACKING_USERNAME"] == settings["MLFLOW_WORKER_USERNAME"]
    assert worker_env["MLFLOW_TRACKING_PASSWORD"] == users_env["MLFLOW_WORKER_PASSWORD"]


def test_prefect_server_database_is_postgres(services):
    url = env_of(services["prefect-server"]).get("PREFECT_API_DATABASE_CONNECTION_URL")
    assert url, "prefect-server has no PREFECT_API_DATABASE_CONNECTION_URL"
    check_postgres_url(services, url, "postgresql+asyncpg", "prefect")
    seg = find_segment(services["prefect-server"], "prefect", "server", "start")[1]
    assert option(seg, "--host") == "0.0.0.0"


# --------------------------------------------------------------------------- artifacts


def test_mlflow_artifacts_go_to_the_minio_bucket(services):
    seg = mlflow_server(services)
    dest = option(seg, "--artifacts-destination")
    assert dest and urlsplit(dest).scheme == "s3", f"artifacts destination is {dest!r}"
    assert "--serve-artifacts" in seg, "clients should upload through the server (--serve-artifacts)"
    assert option(seg, "--host") == "0.0.0.0"

    bucket = urlsplit(dest).netloc
    created = set()
    for s in segments(command_tokens(services["minio-init"])):
        if s[:2] == ["mc", "mb"]:
            created |= {t.split("/", 1)[1] for t in s[2:] if "/" in t and not t.startswith("-")}
    assert bucket in created, f"bucket {bucket!r} is not created by minio-init ({sorted(created)})"

    api_port, _ = minio_ports(services)
    env = env_of(services["mlflow"])
    endpoint = urlsplit(env.get("MLFLOW_S3_ENDPOINT_URL", ""))
    assert (endpoint.hostname, endpoint.port or 80) == ("minio", api_port), endpoint.geturl()
    minio_env = env_of(services["minio"])
    assert env.get("AWS_ACCESS_KEY_ID") == minio_env["MINIO_ROOT_USER"]
    assert env.get("AWS_SECRET_ACCESS_KEY") == minio_env["MINIO_ROOT_PASSWORD"]


def test_minio_init_targets_the_minio_service(services):
    _, alias = find_segment(services["minio-init"], "mc", "alias", "set")
    url = urlsplit(alias[4])
    assert (url.hostname, url.port) == ("minio", minio_ports(services)[0])
    minio_env, init_env = env_of(services["minio"]), env_of(services["minio-init"])
    for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert init_env.get(key) == minio_env[key]
    hc = " ".join(services["minio"]["healthcheck"]["test"])
    assert "ready" in hc or "health" in hc


# --------------------------------------------------------------------------- clients


@pytest.mark.parametrize("client", ["worker", "deploy"])
def test_prefect_api_url_reaches_prefect_server(services, client):
    url = urlsplit(env_of(services[client]).get("PREFECT_API_URL", ""))
    assert url.hostname == "prefect-server" and url.hostname in services, url.geturl()
    assert url.port == prefect_port(services), f"{client} uses port {url.port}"
    assert url.path.rstrip("/") == "/api"


def test_worker_mlflow_tracking_uri_reaches_mlflow(services):
    url = urlsplit(env_of(services["worker"]).get("MLFLOW_TRACKING_URI", ""))
    assert url.scheme == "http"
    assert url.hostname == "mlflow" and url.hostname in services, url.geturl()
    assert url.port == mlflow_port(services), f"worker uses port {url.port}, mlflow listens on {mlflow_port(services)}"

    # MLflow >= 3.5 answers 403 to Host headers outside --allowed-hosts (default: localhost
    # and private IPs only), so the service name the worker uses must be allowed.
    allowed = option(mlflow_server(services), "--allowed-hosts") or env_of(services["mlflow"]).get(
        "MLFLOW_SERVER_ALLOWED_HOSTS"
    )
    assert allowed, "mlflow would reject Host 'mlflow:5000' without --allowed-hosts"
    hosts = [h.strip() for h in allowed.split(",")]
    assert allowed_by_mlflow(hosts, f"{url.hostname}:{url.port}")
    assert allowed_by_mlflow(hosts, "localhost:5000"), "the UI on localhost would be rejected"


def test_worker_image_is_built_from_the_repo_dockerfile(services):
    dockerfile = dockerfile_of(services["worker"])
    assert dockerfile.is_file(), f"{dockerfile} does not exist"
    text = dockerfile.read_text()
    assert re.search(r"^FROM\s+python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"pip install[^\n]*-e \.", text), "Dockerfile must `pip install -e .` the repo"
    assert dockerfile_workdir(dockerfile), "Dockerfile has no WORKDIR"


def test_deploy_service_runs_prefect_deploy_all(services):
    deploy, worker = services["deploy"], services["worker"]
    assert "deploy" in (deploy.get("profiles") or []), "deploy must only run with --profile deploy"
    assert deploy.get("build") == worker.get("build") and deploy.get("image") == worker.get("image")
    _, seg = find_segment(deploy, "prefect", "deploy")
    assert "--all" in seg
    workdir = dockerfile_workdir(dockerfile_of(worker))
    assert deploy.get("working_dir", workdir) == workdir, "prefect deploy must run where prefect.yaml is"


def test_worker_mounts_datasets_read_only(services, deployment):
    mounts = {target: (kind, source) for kind, source, target in volume_entries(services["worker"])}
    entries = [str(v) for v in services["worker"].get("volumes") or []]
    assert "/data" in mounts and any(e.endswith(":/data:ro") for e in entries), entries
    data = str(deployment["parameters"]["data"])
    assert any(data.startswith(t.rstrip("/") + "/") for t in mounts), (
        f"deployment data {data} is not under a worker mount ({sorted(mounts)})"
    )


# --------------------------------------------------------------------------- prefect.yaml


def test_prefect_yaml_pull_step_matches_dockerfile_workdir(prefect_cfg, deployment, services):
    """The pull step changes into the directory the worker names (resolved at run time): the
    image's WORKDIR in compose, the checkout for the native stack."""
    assert prefect_cfg.get("name") == "auditflow"
    directory = pull_directory(prefect_cfg, deployment)
    assert directory == "{{ $AUDITFLOW_CODE_DIR }}", directory
    workdir = dockerfile_workdir(dockerfile_of(services["worker"]))
    assert env_of(services["worker"])["AUDITFLOW_CODE_DIR"] == workdir


def test_deployment_work_pool_matches_worker(deployment, services, settings):
    pool = (deployment.get("work_pool") or {}).get("name")
    assert pool == settings["AUDITFLOW_WORK_POOL"] == "auditflow"
    _, start = find_segment(services["worker"], "prefect", "worker", "start")
    assert option(start, "--pool", "-p") == pool
    assert option(start, "--type", "-t") == settings["AUDITFLOW_WORK_POOL_TYPE"] == "process"
    for svc in ("worker", "deploy"):
        create_idx, create = find_segment(services[svc], "prefect", "work-pool", "create")
        assert create[3] == pool and option(create, "--type", "-t") == "process", create
        limit_idx, limit = find_segment(services[svc], "prefect", "work-pool", "set-concurrency-limit")
        assert create_idx < limit_idx and limit[3:] == [pool, settings["AUDITFLOW_GPU_SLOTS"]], limit
    assert settings["AUDITFLOW_GPU_SLOTS"] == "1"


def test_deployment_entrypoint_is_the_installed_flow(deployment):
    """The entrypoint is a module path in the `auditflow` namespace, and it resolves to the
    flow the CLI runs, whose parameters accept the deployment's defaults."""
    import inspect

    from prefect.flows import load_flow_from_entrypoint

    from auditflow.flows.pipeline import audit_pipeline

    entrypoint = deployment["entrypoint"]
    assert entrypoint == "auditflow.flows.pipeline.audit_pipeline"
    flow = load_flow_from_entrypoint(entrypoint)
    assert flow is audit_pipeline
    unknown = set(deployment.get("parameters") or {}) - set(inspect.signature(flow.fn).parameters)
    assert not unknown, f"parameters {sorted(unknown)} are not arguments of {entrypoint}"


_CRON_FIELDS = [
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    (
        "month",
        1,
        12,
        {
            m: i + 1
            for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])
        },
    ),
    ("day of week", 0, 7, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}),
]


def _cron_errors(expr: str) -> list[str]:
    fields = str(expr).split()
    if len(fields) != 5:
        return [f"{expr!r} has {len(fields)} fields, expected 5"]
    errors = []
    for text, (label, lo, hi, names) in zip(fields, _CRON_FIELDS):

        def value(v: str) -> int:
            n = names[v.lower()] if v.lower() in names else int(v)
            if not lo <= n <= hi:
                raise ValueError
            return n

        for item in text.split(","):
            base, _, step = item.partition("/")
            try:
                if step and int(step) < 1:
                    raise ValueError
                if base != "*":
                    a, _, b = base.partition("-")
                    if b and value(a) > value(b):
                        raise ValueError
                    value(a)
            except ValueError:
                errors.append(f"bad {label} field {text!r}")
    return errors


def test_cron_validator_rejects_bad_expressions():
    # Guards the validator used below against silently accepting everything.
    assert _cron_errors("0 3 * * *") == []
    assert _cron_errors("*/15 0-6 1,15 jan-mar mon-fri") == []
    for bad in (
        "0 3 * *",
        "60 3 * * *",
        "0 24 * * *",
        "0 3 0 * *",
        "0 3 * 13 *",
        "0 3 * * 8",
        "*/0 * * * *",
        "x 3 * * *",
    ):
        assert _cron_errors(bad), bad


def test_deployment_schedule(deployment):
    schedules = deployment.get("schedules") or []
    assert schedules, "auditflow-nightly has no schedules"
    crons = [s for s in schedules if "cron" in s]
    assert crons and crons[0]["cron"] == "0 3 * * *"
    for s in crons:
        assert not _cron_errors(s["cron"]), _cron_errors(s["cron"])
        tz = s.get("timezone")
        if tz:
            try:
                from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
            except ImportError:  # pragma: no cover
                continue
            try:
                ZoneInfo(tz)
            except ZoneInfoNotFoundError:
                if tz != "UTC":  # UTC needs no tz database; others do
                    pytest.fail(f"unknown timezone {tz!r}")
    assert crons[0].get("timezone") == "UTC"
    assert deployment["parameters"] == {
        "profile": "quick",
        "data": "/data/cifar10-jpeg.tar.gz",
        "workdir": "/var/lib/auditflow",
    }


# --------------------------------------------------------------------------- docker compose CLI


def test_docker_compose_config_validates():
    docker = shutil.which("docker")
    if not docker:
        pytest.skip("no docker client installed")
    try:
        version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"`docker compose version` failed: {exc}")
    if version.returncode != 0:
        pytest.skip("the docker compose plugin is not available")
    env_files = ["--env-file", str(STACK_ENV), "--env-file", str(SECRETS_EXAMPLE)]
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), *env_files, "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_deployment_parameters_fit_the_flow_and_config(deployment, services):
    """Every parameter is an argument of audit_pipeline, the profile loads, and the workdir
    is a volume mounted into the worker (so snapshots and checkpoints survive rebuilds)."""
    import inspect

    from auditflow.core.config import load_config
    from auditflow.flows.pipeline import audit_pipeline

    params = deployment["parameters"]
    accepted = set(inspect.signature(audit_pipeline.fn).parameters)
    assert set(params) <= accepted, f"unknown flow parameters: {set(params) - accepted}"
    load_config(params.get("profile", "quick"), params.get("overrides") or [])
    mounts = [str(v).split(":")[1] for v in services["worker"].get("volumes", [])]
    assert params["workdir"] in mounts


# --------------------------------------------------------------------------- compose vs the native stack


def _same_database(compose_url: str, native_url: str) -> None:
    """Same driver, user, password and database; only the host differs (service name vs loopback)."""
    from urllib.parse import unquote

    c, n = urlsplit(compose_url), urlsplit(native_url)
    assert (n.scheme, unquote(n.username), unquote(n.password), n.path) == (c.scheme, c.username, c.password, c.path)


def test_native_stack_runs_the_same_mlflow_server(services, native):
    cmd, env = native.mlflow_server()
    seg = mlflow_server(services)
    assert cmd[:2] == ["mlflow", "server"]
    for name in ("--app-name", "--port", "--workers", "--uvicorn-opts", "--allowed-hosts"):
        assert option(cmd, name) == option(seg, name), name
    assert "--serve-artifacts" in cmd and "--artifacts-destination" in cmd
    _same_database(option(seg, "--backend-store-uri"), env["MLFLOW_BACKEND_STORE_URI"])
    compose_env = env_of(services["mlflow"])
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[key] == compose_env[key], key
    compose_auth_uri, compose_permission = native_stack.mlflow_auth.config_from_env(compose_env)
    native_auth_uri, native_permission = native.mlflow_auth_config()
    _same_database(compose_auth_uri, native_auth_uri)
    assert native_permission == compose_permission


def test_native_stack_runs_the_same_prefect_server(services, native):
    cmd, env = native.prefect_server()
    seg = find_segment(services["prefect-server"], "prefect", "server", "start")[1]
    assert cmd[:3] == ["prefect", "server", "start"] and option(cmd, "--port") == option(seg, "--port")
    compose_env = env_of(services["prefect-server"])
    url = "PREFECT_API_DATABASE_CONNECTION_URL"
    _same_database(compose_env[url], env[url])
    for key in ("PREFECT_UI_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        assert env[key] == compose_env[key], key


def test_native_stack_prepares_the_same_pool_and_worker(services, native):
    create, limit = native.work_pool_commands()
    assert create == find_segment(services["worker"], "prefect", "work-pool", "create")[1]
    assert limit == find_segment(services["worker"], "prefect", "work-pool", "set-concurrency-limit")[1]
    cmd, env = native.worker()
    start = find_segment(services["worker"], "prefect", "worker", "start")[1]
    assert cmd == start, "same `prefect worker start` (pool, type, healthcheck)"
    compose_env = env_of(services["worker"])
    same = (
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "PREFECT_WORKER_WEBSERVER_PORT",
        "PREFECT_LOGGING_EXTRA_LOGGERS",
    )
    for key in same:
        assert env[key] == compose_env[key], key
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        n, c = urlsplit(env[key]), urlsplit(compose_env[key])
        assert (n.scheme, n.port, n.path) == (c.scheme, c.port, c.path), key
    # the code directory differs by design: the image's WORKDIR, the checkout
    assert set(env) == set(compose_env), set(env) ^ set(compose_env)


def test_both_stacks_deploy_prefect_yaml(services):
    """The deployment (name, entrypoint, pool, schedule) is prefect.yaml's in both stacks."""
    _, deploy = find_segment(services["deploy"], "prefect", "deploy")
    assert "--prefect-file" not in deploy and services["deploy"]["working_dir"] == "/opt/auditflow"
    assert native_stack.PREFECT_FILE == PREFECT_FILE
    assert native_stack.prefect_deployments() == yaml.safe_load(PREFECT_FILE.read_text())["deployments"]


def test_native_postgres_uses_the_compose_credentials(services, settings):
    env = env_of(services["postgres"])
    keys = ("POSTGRES_USER", "POSTGRES_PASSWORD")
    assert [env[k] for k in keys] == [settings[k] for k in keys]


# --------------------------------------------------------------------------- slot counts


def _fake_prefect(folder: Path) -> Path:
    """A `prefect` on PATH that appends its arguments to `calls` and succeeds."""
    calls = folder / "calls"
    fake = folder / "prefect"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    return calls


@pytest.mark.parametrize("key", ["AUDITFLOW_WORKER_SLOTS", "AUDITFLOW_GPU_SLOTS"])
@pytest.mark.parametrize("value", ["0", "two", "1.5", "", "-1", "+2", "01", " 2"])
def test_the_worker_refuses_a_bad_slot_count_before_prefect_runs(raw_compose, settings, tmp_path, key, value):
    """The worker's command checks both slot counts first, as `native_stack.load_settings`
    does (the same values refused): a bad one exits 2 with one line naming it, and no
    `prefect` command runs."""
    worker = _interpolate(raw_compose, [], {**settings, key: value})["services"]["worker"]
    calls = _fake_prefect(tmp_path)
    done = subprocess.run(
        worker["command"], env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stderr) == (2, f"{key} must be a whole number of at least 1, got '{value}'\n")
    assert not calls.exists()


def test_good_slot_counts_reach_the_pool_and_the_worker(raw_compose, settings, tmp_path):
    env = {**settings, "AUDITFLOW_GPU_SLOTS": "3", "AUDITFLOW_WORKER_SLOTS": "2"}
    worker = _interpolate(raw_compose, [], env)["services"]["worker"]
    calls = _fake_prefect(tmp_path)
    done = subprocess.run(
        worker["command"], env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert f"work-pool set-concurrency-limit {settings['AUDITFLOW_WORK_POOL']} 3" in lines
    assert any(line.startswith("worker start") and " --limit 2 " in f"{line} " for line in lines), lines


@pytest.mark.parametrize("key", ["AUDITFLOW_WORKER_SLOTS", "AUDITFLOW_GPU_SLOTS"])
@pytest.mark.parametrize("value", ["0", "two", "1.5", "", "-1", "+2", "01", " 2"])
def test_the_native_stack_refuses_a_bad_slot_count(key, value):
    with pytest.raises(native_stack.StackError) as err:
        native_stack.load_settings(None, {**native_stack.random_secrets(), key: value}, environ={})
    assert str(err.value) == f"{key} must be a whole number of at least 1, got {value!r}"
