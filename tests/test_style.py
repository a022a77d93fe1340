"""The results side stays readable: no function over 60 lines (run.main included)."""
import ast

import pytest
from conftest import ROOT

MODULES = ["run.py", "results.py", "distributed.py", "calc_scores.py", "datasets.py", "robustness.py", "bench.py"]


@pytest.mark.parametrize("module", MODULES)
def test_functions_at_most_60_lines(module):
    tree = ast.parse((ROOT / module).read_text())
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long
