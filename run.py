#!/usr/bin/env python3
"""Evaluate a backbone and distances on an IQA dataset (the same as `zsiqa eval`; --help for more)."""
from zsiqa.cli import script

main = script("eval", "run.py")

if __name__ == "__main__":
    main()
