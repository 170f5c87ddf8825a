"""Prefect's local state, checked before any work like the MLflow store.

Without $PREFECT_API_URL a run starts Prefect's temporary API server on the SQLite database in
PREFECT_HOME (and `auditflow serve` starts `prefect server` on it). A home that cannot be made
or written, or a database file that is not one, used to surface only when that server failed
to start: about two minutes of retries, thousands of traceback lines, and a time-out naming
neither the folder nor the file. Here it is one line naming them and what to do."""

from __future__ import annotations

from pathlib import Path

from auditflow.core.errors import OrchestrationError
from auditflow.core.files import check_sqlite_file, check_writable


def check_prefect_home(server_here: bool = False) -> None:
    """`OrchestrationError` naming PREFECT_HOME or its database when the local Prefect API
    could not use them; nothing to check when a Prefect server is configured elsewhere
    (`server_here`: `auditflow serve` is about to start one on them)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url and not server_here:
        return  # a server keeps its own database
    home = Path(settings.home).expanduser()
    what = f"Prefect's home {home} (PREFECT_HOME)"
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OrchestrationError(
            f"{what} cannot be created: {err.strerror}; set PREFECT_HOME to a writable folder"
        ) from err
    check_writable(home, what, OrchestrationError)
    url = settings.server.database.connection_url.get_secret_value()
    if not url.startswith("sqlite") or ":memory:" in url:
        return
    db = Path(url.split(":///", 1)[1])
    check_writable(db.parent, f"the folder of Prefect's database {db.parent}", OrchestrationError)
    fix = (
        f"move it aside (mv {db} {db}.bad) and Prefect starts a new one (its flow-run history only; "
        "MLflow keeps every run), or set PREFECT_HOME to another folder"
    )
    check_sqlite_file(db, f"Prefect's database {db}", fix, error=OrchestrationError)
