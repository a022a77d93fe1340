"""tests/tiny_run.py with every scored pair delayed by $ZSIQA_TEST_DELAY seconds: a run that
holds its results files long enough for a second process to meet its lock.
Usage: python tests/slow_run.py WEIGHTS run.py-arguments..."""
import os
import runpy
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from zsiqa.scorer import Scorer  # noqa: E402

_score_files = Scorer.score_files


def _slow(self, *args, **kwargs):
    for item in _score_files(self, *args, **kwargs):
        time.sleep(float(os.environ.get("ZSIQA_TEST_DELAY", "1")))
        yield item


if __name__ == "__main__":
    Scorer.score_files = _slow
    runpy.run_path(os.path.join(HERE, "tiny_run.py"), run_name="__main__")
