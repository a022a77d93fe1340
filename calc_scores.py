#!/usr/bin/env python3
"""Correlations between a results file's predictions and its labels (the same as `zsiqa corr`; --help for more)."""
from zsiqa.cli import script

main = script("corr", "calc_scores.py")

if __name__ == "__main__":
    main()
