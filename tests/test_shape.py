"""The code's shape as a habit: no function over 60 lines outside tests (ruff checks line
length and complexity; it has no rule for a function's length)."""
import ast

from conftest import ROOT

MAX_LINES = 60


def test_no_function_over_60_lines():
    long = []
    for path in sorted(ROOT.glob("*.py")) + sorted((ROOT / "examples").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            is_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if is_function and node.end_lineno - node.lineno + 1 > MAX_LINES:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
