"""Locks: one run at a time on a file. `Lock` holds a non-blocking lock on each results file's
hidden `.X.csv.lock` (filelock: flock on Unix, LockFileEx on Windows; the file holds the pid
while a run writes X.csv) for a run's duration; `acquire` is the one way a lock is taken, also
for the summary files (waiting) and report folders. The bottom of the store: it imports no
other store module.
"""
import contextlib
import os
import sys

import filelock

from zsiqa.errors import UserError, writing


def lock_path(path):
    """The hidden lock file `.X.csv.lock` beside results file `X.csv`."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.lock")


class Lock:
    """Exclusive, non-blocking locks (filelock) on each results file's `lock_path`, held for a
    run's duration: a second run on a file being written stops at once, naming the pid that
    holds it (written into the lock file while held, emptied before release)."""

    def __init__(self, paths, hint="use another -sdir/-s", name=None):
        self.held = []
        try:
            for path in dict.fromkeys(paths):
                self.held.append(_lock_one(path, hint, (name or lock_path)(path)))
        except BaseException:
            self.release()
            raise

    def release(self):
        for lock in self.held:
            with contextlib.suppress(OSError):
                with open(lock.lock_file, "r+b") as f:
                    f.truncate(0)  # emptied while still held: a later holder writes its own pid
            lock.release()
        self.held = []

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.release()


def _holder(name):
    """The pid written in a lock file by the run holding it ('unknown' when unreadable)."""
    try:
        with open(name, "rb") as f:
            return f.read(32).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _file_mode():
    """0666 less the umask: lock files as open to the user's group as the results beside them
    (filelock 3 made them 0644 whatever the umask, so a group sharing a folder could not lock)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def acquire(name, timeout, kept, busy):
    """The filelock on file `name`, waiting up to `timeout` s; UserError `busy()` when another
    process holds it that long, or why it cannot be taken, then `kept` (what is safe)."""
    lock = filelock.FileLock(name, timeout=timeout, mode=_file_mode())
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if not timeout:
                raise
            sys.stderr.write(f"waiting for another run to release {name} (up to {timeout} s)\n")
            lock.acquire()
    except filelock.Timeout:  # an OSError too: caught first
        raise UserError(busy()) from None
    except OSError as e:
        raise UserError(f"cannot lock {name}: {e.strerror or e}; {kept}") from None
    return lock


def _lock_one(path, hint, name):
    """Take lock file `name` of one results file (or report folder) `path`, or UserError naming
    the run that holds it and what to do (`hint`)."""
    with writing(name, "nothing was written"):
        os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
    lock = acquire(name, 0, "nothing was written",
                   lambda: f"{path} is being written by another run (pid {_holder(name)}); wait for it to finish "
                           f"or {hint}")
    with contextlib.suppress(OSError), open(name, "r+b") as f:  # best effort: the pid only names the holder
        f.truncate(0)
        f.write(f"{os.getpid()}\n".encode())
    return lock


REPORT_LOCK = ".zsiqa-report.lock"  # inside a report folder (--report DIR): one run writes it at a time


def report_lock(folder):
    """The lock of a report folder (`REPORT_LOCK` in it), for eval's and corr's --report DIR: a
    second run writing the same folder stops at once in one line. Held until released."""
    return Lock([folder], "choose another --report", name=lambda f: os.path.join(f, REPORT_LOCK))
