"""Shared fixtures: the golden values (tests/golden/), the seeded stand-in checkpoints (written
once by tests/checkpoints.py and kept), a tiny random ViT backbone for fast pipeline tests, and
the markers that select parts of the suite (pytest.ini lists them). Functions that tests share
live in tests/helpers.py; tests import them from there, never from this file."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import GOLDEN  # noqa: E402
from zsiqa.cli import quiet_library_warnings  # noqa: E402

quiet_library_warnings()


def pytest_collection_modifyitems(items):
    """A test that reads a full-size stand-in checkpoint runs a real backbone on the CPU: `slow`."""
    for item in items:
        if "checkpoint" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def golden():
    return json.loads((GOLDEN / "expected.json").read_text())


@pytest.fixture(scope="session")
def checkpoint():
    """checkpoint(name) → path of the seed-0 stand-in, written by tests/checkpoints.py once and
    kept for later runs in .cache/test-checkpoints/<the writer's digest>/ (or $ZSIQA_TEST_CKPT_DIR):
    a changed writer writes into a new folder."""
    import checkpoints
    outdir = checkpoints.cache_dir()
    return lambda name: checkpoints.make(name, outdir, 0)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A seeded 2-block, 32-wide ViT/16 in timm's layout."""
    from tinymodel import make_tiny_weights
    return make_tiny_weights(tmp_path_factory.mktemp("tiny") / "tiny_vit.pth")


@pytest.fixture
def tiny(monkeypatch, tiny_weights):
    """Register the tiny backbone for this test; returns (name, weights path)."""
    from tinymodel import TINY, register_tiny
    from zsiqa import models
    register_tiny(models.BACKBONES, monkeypatch.setitem)
    return TINY, tiny_weights
