"""Issue 17's signature rule, checked on the source: a public function or method in `models/`,
`audits/` or `auditflow/core/` with more than three parameters takes at most three of them
by position (the rest after `*`, as fairlearn's `MetricFrame` does), so that calls name
their same-typed arguments."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("models", "audits", "auditflow/core")
MAX_POSITIONAL = 3


def _public_functions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            yield from (n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_public_functions_take_at_most_three_arguments_by_position() -> None:
    offenders = []
    for layer in LAYERS:
        for path in sorted((REPO / layer).rglob("*.py")):
            for fn in _public_functions(ast.parse(path.read_text(), str(path))):
                if fn.name.startswith("_"):
                    continue
                positional = [a.arg for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]
                if len(positional) > MAX_POSITIONAL:
                    offenders.append(f"{path.relative_to(REPO)}:{fn.lineno} {fn.name}({', '.join(positional)})")
    assert not offenders, "put `*` after the third parameter:\n" + "\n".join(offenders)


def test_the_check_finds_a_function_with_four_positional_parameters() -> None:
    tree = ast.parse("def f(a, b, c, d):\n    pass\n\nclass C:\n    def g(self, a, b, c, *, d):\n        pass\n")
    found = [fn.name for fn in _public_functions(tree) if len(fn.args.args) - (fn.args.args[0].arg == "self") > 3]
    assert found == ["f"]
