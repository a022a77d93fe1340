"""How a command ends: its exit code, and its output when standard output fails.

`guarded(call)` runs a command's code: a UserError ends it with one `error:` line and exit code 2;
a dependency that is not installed likewise, naming the package; Ctrl-C with 130, what was written
kept; a reader that stopped early (`| head`) quietly with 141, as a tool killed by SIGPIPE; standard
output closed or on a full disk in one line and 2, never a traceback. Nothing here imports torch.
"""
import contextlib
import os
import sys

from zsiqa.errors import UserError


def guarded(call):
    """call()'s exit code (None: 0) with the commands' endings: UserError → one `error:` line
    and 2; Ctrl-C → 130, what was written kept; a reader that stopped early (`| head`) → quiet
    exit 141, as a tool killed by SIGPIPE; standard output closed or unwritable (a full disk)
    → one line and 2, never a traceback (argparse's --help and usage exits included)."""
    try:
        with _checked_stdout():
            try:
                code = call() or 0
            finally:  # here, not at exit, so that a failed write is reported like any other
                if not isinstance(sys.exc_info()[1], (_OutputFailed, _ReaderGone)):
                    sys.stdout.flush()
        return code
    except _ReaderGone:
        _drop_stdout()
        return 141
    except UserError as e:
        if isinstance(e, _OutputFailed):
            _drop_stdout()
        sys.stderr.write(f"error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: results computed so far are kept\n")
        return 130
    except ImportError as e:  # a dependency that is not installed (torch, Pillow, …): named, never a traceback
        if not e.name or e.name.split(".")[0] == "zsiqa":
            raise
        sys.stderr.write(f"error: {missing_dependency(e)}\n")
        return 2


def missing_dependency(e):
    """The line for an ImportError of a third-party module: which package to install, and how."""
    package = {"PIL": "Pillow", "sklearn": "scikit-learn", "yaml": "PyYAML"}.get(e.name.split(".")[0],
                                                                              e.name.split(".")[0])
    return (f"{package} is not installed (no module named {e.name!r}), and zsiqa needs it: install the requirements "
            "(pip install -r requirements.txt, or ./setup.sh)")


def _drop_stdout():
    """Point standard output at the null device: what is left in its buffer goes nowhere, and the
    interpreter's flush at exit cannot fail again (on a stream without a file descriptor, a no-op)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _ReaderGone(Exception):
    """Standard output's reader closed the pipe (a BrokenPipeError elsewhere stays an error)."""


class _OutputFailed(UserError):
    """Standard output cannot be written: closed, or on a full disk."""


@contextlib.contextmanager
def _checked_stdout():
    """sys.stdout, its failed writes raised as _ReaderGone (a closed pipe) or _OutputFailed."""
    real = sys.stdout
    sys.stdout = _Output(real)
    try:
        yield
    finally:
        sys.stdout = real


class _Output:
    """A text stream whose write/flush turn a closed pipe into _ReaderGone and any other OSError
    (ENOSPC, EIO, EBADF) into _OutputFailed. Over a closed stdout (None), printing anything fails
    in the same way, when it is printed: an argument error before it still reads as one."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        if self._stream is None:
            if text:
                raise _OutputFailed("standard output is closed (>&-), so nothing could be printed; redirect it "
                                    "to a file or /dev/null instead")
            return 0
        return self._guard(self._stream.write, text)

    def flush(self):
        return None if self._stream is None else self._guard(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)

    @staticmethod
    def _guard(method, *args):
        try:
            return method(*args)
        except BrokenPipeError:
            raise _ReaderGone() from None
        except OSError as e:
            raise _OutputFailed(f"cannot write to standard output: {e.strerror or e}") from None
