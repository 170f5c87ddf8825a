"""A new SQLite tracking store starts as a copy of an empty, migrated one.

MLflow creates a SQLite store by running its alembic migrations one by one (about 3 s of CPU on
a 2-core machine, for every new work folder). The result is the same file each time, so it is
built once per MLflow version in the user's cache (`$XDG_CACHE_HOME/auditflow`, else
`~/.cache/auditflow`) and copied. The copy holds the tables and the schema version only: MLflow
adds its Default experiment when it first opens the store, with that store's own artifact root.

Hand-written (MLflow has no template option); best effort: if the cache cannot be written or
MLflow's table set-up changes, MLflow creates the store itself as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "auditflow"


def _template() -> Path:
    """The empty migrated store of the installed MLflow version, built on first use."""
    import mlflow

    path = cache_home() / f"mlflow-{mlflow.__version__}-empty.db"
    if path.is_file():
        return path
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".mlflow-", suffix=".db")
    os.close(fd)
    try:
        engine = sqlalchemy.create_engine(f"{SQLITE}{tmp}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(tmp, path)  # whoever builds it last wins: every build is the same file
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def seed_sqlite_store(uri: str) -> bool:
    """Copy the empty migrated store to `uri`'s file when `uri` is a SQLite store that does not
    exist yet (its folder does). Never replaces a file: the copy is linked into place, which
    fails if another process created the store meanwhile. True when the store was seeded."""
    if not uri.startswith(SQLITE):
        return False
    db = Path(uri.removeprefix(SQLITE))
    if db.exists() or not db.parent.is_dir():
        return False
    try:
        template = _template()
        tmp = db.with_name(f".{db.name}.{os.getpid()}.{secrets.token_hex(4)}.seed")
        # os.open applies the umask, as MLflow's own new store would (mkstemp's files are 0600)
        with (
            open(template, "rb") as src,
            os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
        try:
            os.link(tmp, db)
        finally:
            os.unlink(tmp)
    except Exception as err:  # any failure: MLflow creates the store itself, as without a template
        log.debug("MLflow creates %s itself (no template: %s: %s)", db, type(err).__name__, err)
        return False
    return True
