#!/usr/bin/env bash
# The project's checks, in the order CI runs them: lint and format (ruff), the layering
# contracts (import-linter), then the tests (pytest, arguments passed through).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== ruff: lint and format"
ruff check .
ruff format --check .

echo "== import-linter: core -> models | audits -> tasks -> flows -> cli"
# import-linter reads packages from their folders; the editable install maps models/, tasks/...
# into auditflow.* with an import hook it cannot follow, so check a real (non-editable) copy of
# the installed layout, from outside the repository so the source tree does not shadow it.
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
pip install --quiet --no-deps --no-build-isolation --target "$site" . >/dev/null
rm -rf build
(cd "$site" && PYTHONPATH="$site" lint-imports "$OLDPWD/pyproject.toml")

echo "== pytest"
# The install skips byte-compiling (pip --no-compile, README command 2): let Python cache what it
# imports, once, even where the environment says not to (PYTHONDONTWRITEBYTECODE=1 on the CI
# machines), or every worker and CLI subprocess would compile torch, Prefect and MLflow again.
unset PYTHONDONTWRITEBYTECODE
# Four workers on the 2-core CI machine (a file per worker; tests/conftest.py: the order, one thread each):
# a third of the suite's wall time is spent waiting (servers starting, cron minutes), which a fourth
# worker fills (12:08 against 14:05 with three, NOTES.md);
# AUDITFLOW_TEST_WORKERS=0 runs in one process.
workers="${AUDITFLOW_TEST_WORKERS:-4}"
if [ "$workers" = 0 ]; then pytest "$@"; else pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"; fi
