"""MLflow basic auth for the team stack: the server's config file and the stack's users.

Standard library only, so it runs both inside the MLflow image (docker-compose.yml mounts this
file) and from deploy/native_stack.py:

    python mlflow_auth.py config PATH    # write the basic-auth ini; settings from the environment
    python mlflow_auth.py users URL      # create or update the worker and reviewer users

`config` reads POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_HOST, POSTGRES_PORT, MLFLOW_AUTH_DB and
MLFLOW_AUTH_DEFAULT_PERMISSION; `users` reads MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD and
MLFLOW_WORKER_/MLFLOW_REVIEWER_ USERNAME/PASSWORD. The admin user itself is created by the
server on its first start, from MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
USER_ROLES = ("WORKER", "REVIEWER")  # MLFLOW_<ROLE>_USERNAME / MLFLOW_<ROLE>_PASSWORD


class AuthSetupError(RuntimeError):
    """A setting is missing or the server refused a request."""


def postgres_uri(
    user: str, password: str, host: str, port: int | str, database: str, scheme: str = "postgresql+psycopg"
) -> str:
    """A SQLAlchemy URL (psycopg 3 by default: SQLAlchemy 2.1 and MLflow both take it); user and password
    are percent-encoded."""
    quote = urllib.parse.quote
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"


def write_config(path: Path, database_uri: str, default_permission: str = "READ") -> Path:
    """The ini MLFLOW_AUTH_CONFIG_PATH names. No admin password in it: the server takes that from
    MLFLOW_AUTH_ADMIN_PASSWORD. Readable by its owner only (the URI holds the DB password)."""
    if default_permission not in PERMISSIONS:
        raise AuthSetupError(f"MLFLOW_AUTH_DEFAULT_PERMISSION={default_permission!r}; use one of {PERMISSIONS}")
    # MLflow reads the file with ConfigParser's %-interpolation: a literal % is written %%.
    text = (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database_uri.replace('%', '%%')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        # Checking a password hash costs about a second of CPU, and a pipeline run sends
        # hundreds of requests: each worker process remembers a good password for a minute
        # (so a changed password reaches every worker within a minute).
        "auth_cache_ttl_seconds = 60\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


def _request(method: str, url: str, auth: tuple[str, str], body: dict | None = None) -> tuple[int, dict]:
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, {"message": text}


def wait_healthy(base_url: str, timeout_s: float = 120.0) -> None:
    """Wait until GET /health answers 200 (it needs no credentials)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AuthSetupError(f"MLflow at {base_url} not healthy after {timeout_s:.0f} s")
        time.sleep(1)


def ensure_user(base_url: str, admin: tuple[str, str], username: str, password: str) -> str:
    """Create `username`, or set its password if it exists; returns "created" or "updated"."""
    api = f"{base_url}/api/2.0/mlflow/users"
    status, body = _request("GET", f"{api}/get?{urllib.parse.urlencode({'username': username})}", admin)
    if status == 200:
        status, body = _request("PATCH", f"{api}/update-password", admin, {"username": username, "password": password})
        outcome = "updated"
    else:
        status, body = _request("POST", f"{api}/create", admin, {"username": username, "password": password})
        outcome = "created"
    if status != 200:
        raise AuthSetupError(f"MLflow refused to set up user {username!r} (HTTP {status}): {body.get('message', body)}")
    return outcome


def ensure_users(base_url: str, env: dict[str, str]) -> dict[str, str]:
    """The worker and reviewer users from MLFLOW_<ROLE>_USERNAME/_PASSWORD in `env`."""
    admin = (_need(env, "MLFLOW_AUTH_ADMIN_USERNAME"), _need(env, "MLFLOW_AUTH_ADMIN_PASSWORD"))
    done = {}
    for role in USER_ROLES:
        name = _need(env, f"MLFLOW_{role}_USERNAME")
        done[name] = ensure_user(base_url, admin, name, _need(env, f"MLFLOW_{role}_PASSWORD"))
    return done


def config_from_env(env: dict[str, str]) -> tuple[str, str]:
    """(database URI, default permission) of the auth config, from the variables `config` reads."""
    uri = postgres_uri(
        _need(env, "POSTGRES_USER"),
        _need(env, "POSTGRES_PASSWORD"),
        env.get("POSTGRES_HOST", "postgres"),
        env.get("POSTGRES_PORT", "5432"),
        _need(env, "MLFLOW_AUTH_DB"),
    )
    return uri, env.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ")


def _need(env: dict[str, str], key: str) -> str:
    value = env.get(key)
    if not value:
        raise AuthSetupError(f"{key} is not set (settings: deploy/stack.env; secrets: .env, see .env.example)")
    return value


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    try:
        if len(argv) == 2 and argv[0] == "config":
            print(f"wrote {write_config(Path(argv[1]), *config_from_env(env))}")
            return 0
        if len(argv) == 2 and argv[0] == "users":
            base = argv[1].rstrip("/")
            wait_healthy(base)
            for name, outcome in ensure_users(base, env).items():
                print(f"mlflow user {name}: {outcome}")
            return 0
    except AuthSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
