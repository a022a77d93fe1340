"""A dependency that is not installed (simulated by an import blocker in a fresh process) is
named in one `error:` line with exit code 2, never a traceback: `zsiqa --help` without Pillow
or numpy, a command that needs torch without it."""
import subprocess
import sys

import pytest

from helpers import ROOT

BLOCKED = """import runpy, sys
blocked = sys.argv[1]


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == blocked or name.startswith(blocked + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, Blocker())
sys.argv = ["zsiqa", *sys.argv[2:]]
runpy.run_module("zsiqa", run_name="__main__")
"""


def _run(module, *argv):
    proc = subprocess.run([sys.executable, "-c", BLOCKED, module, *argv], capture_output=True, text=True, cwd=ROOT)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("module, package, argv", [("PIL", "Pillow", ["--help"]), ("numpy", "numpy", ["--help"]),
                                                   ("PIL", "Pillow", ["score", "--help"]),
                                                   ("torch", "torch", ["models"])])
def test_missing_dependency_is_one_line(module, package, argv):
    code, out, err = _run(module, *argv)
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert err.startswith(f"error: {package} is not installed (no module named '{module}')") and err.count("\n") == 1
    assert "pip install -r requirements.txt" in err


def test_help_needs_no_torch():
    code, out, err = _run("torch", "--help")
    assert code == 0 and err == "" and "zsiqa COMMAND --help" in out


def test_package_docstring_puts_the_distorted_image_first():
    """`import zsiqa; help(zsiqa)` showed metric("ref.png", "dis.png"): the old order."""
    import inspect

    import zsiqa
    from zsiqa.scorer import Scorer
    assert list(inspect.signature(Scorer.__call__).parameters)[1:] == ["dis", "ref"]
    assert 'metric("dis.png", "ref.png")' in zsiqa.__doc__ and '("ref.png", "dis.png")' not in zsiqa.__doc__
