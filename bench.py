#!/usr/bin/env python3
"""Throughput of the engine, the one-pair loop and the backbone (the same as `zsiqa bench`; --help for more)."""
from zsiqa.cli import script

main = script("bench", "bench.py")

if __name__ == "__main__":
    main()
