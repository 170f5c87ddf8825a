"""The product installs as one namespace: nothing but `auditflow` at the top of site-packages,
next to other distributions that own the generic names `models` and `tasks`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STANDINS = ("models", "tasks")


def _standin(root: Path, name: str) -> Path:
    """A tiny distribution `standin-NAME` that owns the top-level package NAME."""
    src = root / f"standin-{name}"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text('ORIGIN = "standin"\n')
    (src / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "standin-{name}"\nversion = "1.0"\n'
        f'[tool.setuptools]\npackages = ["{name}"]\n'
    )
    return src


def _run(cmd: list[str | Path], **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _shipped_sources() -> set[str]:
    """Each product file in the source tree (code, profiles, templates), as its installed path."""
    folders = {"auditflow": "auditflow", "models": "auditflow/models", "audits": "auditflow/audits"}
    folders |= {"tasks": "auditflow/tasks", "flows": "auditflow/flows"}
    return {
        f"{target}/{path.relative_to(REPO / source).as_posix()}"
        for source, target in folders.items()
        for path in (REPO / source).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.mark.slow
def test_install_beside_models_and_tasks_distributions(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # No pip of its own (Python 3.11's bundled setuptools cannot build wheels without `wheel`):
    # this environment's pip installs into it, and builds with this environment's setuptools.
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", py, "--disable-pip-version-check", "--quiet"]
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The dependencies (torch alone is 5 GB) come from the test's own environment, after the new
    # venv's own site-packages: what is installed below shadows them, never the other way round.
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for name in STANDINS:
        _run([*pip, "install", "--no-deps", "--no-build-isolation", _standin(tmp_path, name)])

    source = tmp_path / "auditflow-src"  # a copy: building writes build/ and egg-info into the tree
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "build",
            "*.egg-info",
            "__pycache__",
            "auditflow-cache",
            "auditflow-work",
            "mlartifacts",
            "*.db",
        ),
    )
    _run([*pip, "install", "--no-deps", "--no-build-isolation", source])

    files = _run([*pip[:-2], "show", "-f", "auditflow"]).stdout.split("Files:", 1)[1].split()
    top = {f.split("/")[0] for f in files if not f.startswith("..") and ".dist-info" not in f.split("/")[0]}
    assert top == {"auditflow"}, top
    probe = "import models, tasks; print(models.ORIGIN, tasks.ORIGIN, models.__file__)"
    out = _run([py, "-c", probe], cwd=tmp_path).stdout.split()
    assert out[:2] == ["standin", "standin"] and out[2].startswith(str(site)), out

    # A user's project with its own `models/` and `tasks.py` in the current directory (first on
    # sys.path for `python -m` and torchrun) must not shadow ours.
    project = tmp_path / "user-project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text('raise ImportError("the user\'s models package")\n')
    (project / "tasks.py").write_text('raise ImportError("the user\'s tasks module")\n')
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PYTHONPATH", None)
    # Every module imports from site-packages with the user's folder first on sys.path (as for
    # `python -m` and torchrun), and every product file, code or data, was installed. This stands in
    # for a whole `auditflow run` from the installed copy (about 60 s of CPU): the pipeline itself
    # is run by test_cli and test_flow, and what an install can break is a module or a file missing.
    walk = (
        "import importlib, pkgutil, auditflow\n"
        "for m in pkgutil.walk_packages(auditflow.__path__, 'auditflow.'):\n"
        "    print(importlib.import_module(m.name).__file__)\n"
    )
    imported = _run([py, "-c", walk], cwd=project, env=env).stdout.split()
    assert len(imported) > 50 and all(f.startswith(str(site)) for f in imported), imported
    assert _shipped_sources() <= set(files), sorted(_shipped_sources() - set(files))
    out = _run([venv / "bin" / "auditflow", "profiles"], cwd=project, env=env).stdout
    assert "quick" in out and "tutorial" in out, out
    _run([py, "-m", "auditflow.cli", "run", "--help"], cwd=project, env=env)

    # Uninstalling a stand-in removes only its own files.
    _run([*pip, "uninstall", "--yes", "standin-models"])
    _run(
        [py, "-c", "import auditflow.models.training.fit, auditflow.tasks.train, tasks; print(tasks.ORIGIN)"],
        cwd=tmp_path,
    )
