"""The golden data travels with the repository: tests/golden/ and the project's own writer of the
seeded stand-in checkpoints (tests/checkpoints.py), whose values must be those the published
code was run with: their content digests are the ones the golden README lists."""
import hashlib
import re

import pytest

import checkpoints
from helpers import GOLDEN, ROOT


def _listed_digests():
    """{name: digest} from tests/golden/README.md (`clip_vitb32_seed0.pt 7834aa9124c4c993`, …)."""
    text = (GOLDEN / "README.md").read_text()
    return {m[0]: m[1] for m in re.findall(r"`(\w+)_seed0\.\w+ ([0-9a-f]{16})`", text)}


def test_every_stand_in_has_a_listed_digest():
    assert sorted(_listed_digests()) == sorted(checkpoints.KINDS) and len(checkpoints.KINDS) == 7


@pytest.mark.golden
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(checkpoints.KINDS))
def test_stand_in_values_have_the_listed_digest(name):
    """The values drawn (in memory, no file written) are those the golden scores were computed with."""
    shapes, dtype, _, gain = checkpoints.KINDS[name]
    assert checkpoints.state_digest(checkpoints.fill(shapes(), 0, dtype, gain)) == _listed_digests()[name]


@pytest.mark.golden
@pytest.mark.parametrize("name", ["clip_vitb32", "dinov1"])
def test_written_stand_in_reads_back_with_the_listed_digest(checkpoint, name):
    assert checkpoints.digest(checkpoint(name)) == _listed_digests()[name]


def test_cache_folder_is_named_after_the_writer(monkeypatch):
    """A changed writer writes into a new folder, never over the files of another version."""
    monkeypatch.delenv("ZSIQA_TEST_CKPT_DIR", raising=False)
    key = hashlib.sha256((ROOT / "tests" / "checkpoints.py").read_bytes()).hexdigest()[:12]
    assert checkpoints.cache_dir() == str(ROOT / ".cache" / "test-checkpoints" / key)
    monkeypatch.setenv("ZSIQA_TEST_CKPT_DIR", "/somewhere/else")
    assert checkpoints.cache_dir() == "/somewhere/else"


def test_the_tests_read_nothing_beside_the_checkout():
    """No test reads a spec folder beside the checkout ($ZSIQA_SHARED, ../shared): a clone alone
    runs every test."""
    outside = r"ZSIQA_SHARED|\.\./shared|parents?\[\d\] */ *[\"']shared|parent */ *[\"']shared"
    found = [(p.name, m) for p in sorted((ROOT / "tests").glob("*.py")) if p.name != "test_golden_data.py"
             for m in re.findall(outside, p.read_text())]
    assert found == []
    assert (GOLDEN / "expected.json").is_file() and len(list((GOLDEN / "models").glob("*.png"))) == 6
