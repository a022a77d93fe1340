#!/usr/bin/env python3
"""Score one reference/distorted pair (the same as `zsiqa score`; --help for more)."""
from zsiqa.cli import script

main = script("score", "run_single_img.py")

if __name__ == "__main__":
    main()
