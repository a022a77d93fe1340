"""The public API's type hints hold: mypy passes on the modules pyproject's [tool.mypy] lists
(Scorer, PerceptualLoss, create_metric, list_metrics, TorchMetric, the registries, UserError),
and the package ships its py.typed marker (PEP 561)."""
import subprocess
import sys

import pytest

from helpers import ROOT

PUBLIC = ["zsiqa/__init__.py", "zsiqa/scorer.py", "zsiqa/loss.py", "zsiqa/metric.py", "zsiqa/core.py",
          "zsiqa/errors.py", "zsiqa/distances.py", "zsiqa/models.py", "zsiqa/torchmetric.py"]


def test_py_typed_ships_with_the_package():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads TOML")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (ROOT / "zsiqa" / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["zsiqa"]


def test_mypy_passes_on_the_public_api():
    pytest.importorskip("mypy", reason="mypy is not installed (requirements-dev.txt)")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", *PUBLIC], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
