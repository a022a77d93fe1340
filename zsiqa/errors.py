"""The one error users see, and the rules that turn a file that cannot be read or written into it.

`UserError` is a problem with what the user asked for or gave (files, names, sizes, weights,
options). The command line prints its message on one line and exits with code 2; Python
callers catch it like any exception. Nothing here imports torch, so the CLI's `--help` and
its argument checks stay fast.
"""
import contextlib
import os
import stat
import sys


class UserError(Exception):
    """A problem with the user's input or request, told in one line (exit code 2 on the CLI)."""


class ScoreWarning(RuntimeWarning):
    """Scores that came out NaN or infinite (most often features that overflowed at half precision):
    warned by the API (`Scorer.score`, `score_files`); the score command says it in one line and
    exits with code 3. JSON output keeps such a score as null."""


class ImageNoteWarning(UserWarning):
    """An image scored as the published code scores it, which a user may not expect: one with a
    non-default EXIF orientation (scored as stored, not rotated) or an animated one (scored by its
    first frame). The commands say it once per run with a count (`images.pair_problems`)."""


def warn_line(line):
    """Tell the user something that does not stop the command: one `warning:` line on stderr."""
    sys.stderr.write(f"warning: {line}\n")


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


def file_problem(path):
    """Why `path` cannot be read as a file, or None: 'missing', 'a folder', or 'not a regular
    file (…)' (a FIFO or a device would block the reader forever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "missing"
    if stat.S_ISDIR(mode):
        return "a folder"
    return None if stat.S_ISREG(mode) else "not a regular file (a FIFO, socket or device)"


def check_readable(path, what):
    """UserError unless `path` is a regular file (`file_problem`), one line naming `what` and the path."""
    problem = file_problem(path)
    if problem == "missing":
        raise UserError(f"{what} not found: {path}")
    if problem:
        raise UserError(f"{what} {path} is {problem}, not a file" if problem == "a folder" else
                        f"{what} {path} is {problem}")
    return path
