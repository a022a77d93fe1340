"""Portability: nothing Unix-only is imported (Windows has no fcntl), and the files a run writes
respect the user's umask, so colleagues on a shared server can read them."""
import ast
import os
import stat
import subprocess
import sys

import pytest

import minidata
import run
from helpers import ROOT

UNIX_ONLY = {"fcntl", "termios", "resource", "pwd", "grp", "posix"}


def test_no_unix_only_module_is_imported():
    found = [(p.name, node.lineno) for p in sorted((ROOT / "zsiqa").rglob("*.py"))
             for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, (ast.Import, ast.ImportFrom))
             and {(a.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
                  for a in node.names} & UNIX_ONLY]
    assert not found, found


@pytest.mark.slow
@pytest.mark.subprocess
def test_commands_import_where_fcntl_does_not_exist():
    """What Windows sees: `import fcntl` fails; every command module still imports."""
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import zsiqa.results, zsiqa.evaluate, zsiqa.correlate, zsiqa.cli, zsiqa.benchmark\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def _modes(folder):
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


def test_results_files_follow_the_umask(tiny, tmp_path):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=1, n_dis=3)
    for mask, want in ((0o022, 0o644), (0o077, 0o600)):
        out = tmp_path / f"r{mask:o}"
        old = os.umask(mask)
        try:
            assert run.main(["-dat", "pipal", "--root", root, "-m", tiny[0], "--weights", tiny[1], "-d", "l2,cos",
                             "--device", "cpu", "--no-progress", "-sdir", str(out)]) == 0
        finally:
            os.umask(old)
        modes = _modes(out)
        written = {n: m for n, m in modes.items() if not n.startswith(".")}  # the hidden lock files are filelock's
        assert {f"pipal_{tiny[0]}_l2.csv", f"pipal_{tiny[0]}_cos.json", "summary.csv"} <= set(written)
        assert set(written.values()) == {want}, (mask, modes)


def test_rows_name_images_with_forward_slashes_on_windows(tmp_path, monkeypatch):
    """Every layout's rows name images with '/': KADID-10k's went through os.path.normpath, which
    on Windows writes 'images\\x.png' (its results files would not resume on Linux and back)."""
    import ntpath

    from zsiqa import datasets
    root = minidata.make_kadid(str(tmp_path / "k"))
    monkeypatch.setattr(os.path, "normpath", ntpath.normpath)  # os.path.normpath as Windows has it
    pairs = datasets.LAYOUTS["kadid10k"].load(root).pairs
    monkeypatch.undo()
    assert pairs and all("\\" not in ref + dis and ref.startswith("images/") for ref, dis, _ in pairs)
