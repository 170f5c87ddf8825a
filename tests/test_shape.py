"""Issue 17's shape, kept: thin tasks and flows, a CLI that only parses, calls and renders.
(It crept back once: `audit_pipeline` grew to 84 lines and cli.py to 464 before this test.)"""

from __future__ import annotations

import ast
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _functions(folder: str) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((f"{folder}/{path.name}", node))
    return found


def _is_task(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    names = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
    return any(isinstance(n, ast.Name) and n.id == "task" for n in names)


def _lines(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1  # type: ignore[attr-defined]


def test_no_task_or_flow_function_is_over_60_lines_and_the_median_task_is_under_40() -> None:
    everything = _functions("tasks") + _functions("flows")
    long = [f"{path}::{node.name} ({_lines(node)} lines)" for path, node in everything if _lines(node) > 60]
    assert not long, long
    tasks = [_lines(node) for _, node in _functions("tasks") if _is_task(node)]
    assert len(tasks) >= 10 and statistics.median(tasks) < 40, tasks


def test_the_cli_is_under_450_lines_with_no_thread_signal_or_exit_of_its_own() -> None:
    source = (ROOT / "auditflow" / "cli.py").read_text()
    assert len(source.splitlines()) < 450
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert not imported & {"threading", "signal"}, imported
    assert "os._exit" not in source
