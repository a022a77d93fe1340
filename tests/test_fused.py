"""The fused Triton kernels (CUDA path for skld/jsd/wsd) against the eager definitions and
the golden values, run in Triton's CPU interpreter in a separate process."""
import os
import subprocess
import sys

import pytest

from helpers import GOLDEN, ROOT

pytest.importorskip("triton", reason="Triton is not installed; the fused GPU path is then never used")

@pytest.mark.slow
@pytest.mark.golden
@pytest.mark.subprocess
def test_fused_kernels_match_eager_and_golden():
    args = [sys.executable, str(ROOT / "tests" / "fused_check.py"), str(GOLDEN)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
