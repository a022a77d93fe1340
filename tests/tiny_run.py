"""Run run.py with the tiny test backbone registered (for subprocess and torchrun tests).
Usage: python tests/tiny_run.py WEIGHTS run.py-arguments..."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run  # noqa: E402
from tinymodel import register_tiny  # noqa: E402
from zsiqa import models  # noqa: E402

if __name__ == "__main__":
    register_tiny(models.BACKBONES)
    run.main(["--weights", sys.argv[1], *sys.argv[2:]])
