"""Names are written once (`auditflow/core/names.py`) and a run's names do not drift.

- No `stage/...` name (metric, tag, artifact) is a string literal outside the names module,
  in code or in a report template; no verdict group is a literal in a `Check(verdict=...)`.
- A pipeline run's metric, param and tag keys and artifact paths equal the list recorded before
  the stage refactor (`tests/data/run_keys.json`, written by `tests/run_keys.py`).
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("auditflow", "models", "audits", "tasks", "flows")
NAMES_MODULE = ROOT / "auditflow" / "core" / "names.py"
STAGES = (
    *("ingest", "train", "evaluate", "fairness", "transparency", "privacy", "export", "benchmark", "release"),
    "tune",
    *("verdict", "compare"),
)
# A string literal (any prefix: f, r, b...) whose text starts with a stage's name and a slash.
NAME_LITERAL = re.compile(rf"""^[A-Za-z]*(['"]{{1,3}})({"|".join(STAGES)})/""")
TEMPLATE_LITERAL = re.compile(rf"""['"]({"|".join(STAGES)})/[A-Za-z_{{]""")


def _python_files() -> list[Path]:
    files = [p for folder in SOURCES for p in (ROOT / folder).rglob("*.py")]
    return sorted(p for p in files if p != NAMES_MODULE and ".venv" not in p.parts)


def _name_literals(path: Path) -> list[str]:
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.STRING and NAME_LITERAL.match(token.string):
            found.append(f"{where}:{token.start[0]}: {token.string[:60]}")
    return found


def test_the_scan_sees_a_name_literal(tmp_path: Path) -> None:
    """The scanner itself: it must flag plain, f-string and single-quoted names, and not others."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        'a = "evaluate/test_accuracy"\nb = f"privacy/{x}/auc"\nc = \'train/plan\'\n'
        'd = "checkpoint/model.pt"\ne = "a/evaluate/b"\n'
    )
    assert [line.split(": ", 1)[1] for line in _name_literals(sample)] == [
        '"evaluate/test_accuracy"',
        'f"privacy/{x}/auc"',
        "'train/plan'",
    ]


def test_no_metric_or_tag_name_is_a_literal_outside_the_names_module() -> None:
    found = [hit for path in _python_files() for hit in _name_literals(path)]
    assert not found, "use auditflow.core.names instead of:\n" + "\n".join(found)


def test_report_templates_read_names_from_the_names_module() -> None:
    found = []
    for template in sorted((ROOT / "audits" / "templates").glob("*.j2")):
        for number, line in enumerate(template.read_text().splitlines(), 1):
            if TEMPLATE_LITERAL.search(line):
                found.append(f"{template.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not found, "templates get the names module as `names`:\n" + "\n".join(found)


def test_no_verdict_group_is_a_literal() -> None:
    found = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    value = keyword.value
                    if keyword.arg == "verdict" and isinstance(value, ast.Constant | ast.JoinedStr):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, "verdict groups come from auditflow.core.names.Verdict:\n" + "\n".join(found)


@pytest.mark.slow
def test_a_runs_names_match_the_list_recorded_before_the_refactor(shared_run) -> None:
    from run_keys import run_keys

    result = shared_run[0]
    recorded = json.loads((ROOT / "tests" / "data" / "run_keys.json").read_text())
    now = run_keys(result.tracking_uri, result.run_id)
    assert sorted(now) == sorted(recorded), "the same stage runs"
    differences = {
        f"{run}/{kind}": {
            "new": sorted(set(now[run][kind]) - set(recorded[run][kind])),
            "gone": sorted(set(recorded[run][kind]) - set(now[run][kind])),
        }
        for run in recorded
        for kind in recorded[run]
        if set(now[run][kind]) != set(recorded[run][kind])
    }
    assert not differences, json.dumps(differences, indent=1)
