"""`python -m zsiqa COMMAND ...`: the same as the `zsiqa` command."""
from zsiqa.cli import main

main()
