"""The one error users see, and the one rule that turns a failed write into it.

`UserError` is a problem with what the user asked for or gave (files, names, sizes, weights,
options). The command line prints its message on one line and exits with code 2; Python
callers catch it like any exception. Nothing here imports torch, so the CLI's `--help` and
its argument checks stay fast.
"""
import contextlib


class UserError(Exception):
    """A problem with the user's input or request, told in one line (exit code 2 on the CLI)."""


@contextlib.contextmanager
def writing(path, kept="its earlier content is kept"):
    """An output file (results, record, plot, map, report) that cannot be written — a missing
    or read-only folder, a folder in its place, a full disk, an unknown image extension — ends
    in one line naming it and what was kept."""
    try:
        yield
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot write {path}: {reason}; {kept}") from None
