"""bench.py runs end to end at a tiny size (its speed figures are reported, never asserted)."""
import json

import pytest

import bench
from helpers import fails_one_line


@pytest.mark.slow
def test_bench_runs_tiny(capsys, tmp_path):
    """Every figure, --via-run included: the eval command on the same set, from the benchmark's
    random weights saved as a CLIP file, gives the engine's scores pair for pair."""
    bench.main(["--device", "cpu", "--model", "clip_vitb32", "--size", "224", "--refs", "1", "--pairs", "3",
                "--loop-pairs", "1", "--batch-size", "2", "--forward-iters", "1", "--data", str(tmp_path / "set"),
                "--via-run", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 3 and out["loop_pairs_timed"] == 1
    assert out["distances"] == ["l2", "cos", "skld", "jsd", "wsd"]
    for key in ("engine_pairs_per_s", "loop_pairs_per_s", "forward_windows_per_s", "speedup",
                "engine_share_of_forward", "via_run_pairs_per_s", "via_run_wall_s", "via_run_before_scoring_s"):
        assert out[key] > 0, key
    assert out["engine_vs_loop_max_rel_diff"] < 1e-4  # the two paths score the same pairs alike
    assert out["via_run_vs_engine_max_rel_diff"] < 1e-6 and out["via_run_after_scoring_s"] >= 0
    assert len(list((tmp_path / "set" / "Train_Dis").glob("*.bmp"))) == 3
    assert len(list((tmp_path / "set" / "Train_Ref").glob("*.bmp"))) == 1


def test_bench_refuses_bad_sizes(capsys):
    for args, match in [(["--refs", "0"], "at least 1"), (["--pairs", "0"], "at least 1"),
                        (["--loop-pairs", "-1"], "at least 0"), (["--size", "100"], "at least 224"),
                        (["--batch-size", "0"], "at least 1"), (["--forward-iters", "0"], "at least 1")]:
        fails_one_line(capsys, lambda args=args: bench.main(["--device", "cpu", *args]), match, warnings=False)


def test_bench_data_folder_is_its_own_or_refused(capsys, tmp_path):
    """--data holding anything but a set made with the same settings is refused in one line (its
    images were timed and scored as the set asked for); the same settings reuse it."""
    from zsiqa import benchmark
    folder = tmp_path / "set"
    first = benchmark.make_set(str(folder), 224, 1, 2)
    assert benchmark.make_set(str(folder), 224, 1, 2) == first
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.png").write_bytes(b"x")
    for data, size in [(folder, "256"), (other, "224")]:
        fails_one_line(capsys, lambda data=data, size=size: bench.main(
            ["--device", "cpu", "--size", size, "--refs", "1", "--pairs", "2", "--data", str(data)]),
            "give an empty or new folder", warnings=False)
    assert (other / "photo.png").read_bytes() == b"x" and not (other / "Train_Ref").exists()


@pytest.mark.slow
def test_bench_without_the_loop_prints_no_nan(capsys):
    """--loop-pairs 0 (as docs/speed.md shows it): the loop is said to be untimed; no 'nan' or
    'None' printed for its rate, the speedup or the agreement."""
    bench.main(["--device", "cpu", "--model", "clip_vitb32", "--size", "224", "--refs", "1", "--pairs", "1",
                "--loop-pairs", "0", "--forward-iters", "1"])
    out = capsys.readouterr().out
    assert "not timed (--loop-pairs 0)" in out and "nan" not in out and "None" not in out
    assert "engine" in out and "pairs/s" in out


def _bench_data(data):
    bench.main(["--device", "cpu", "--model", "clip_vitb32", "--size", "224", "--refs", "1", "--pairs", "2",
                "--loop-pairs", "0", "--forward-iters", "1", "--data", str(data)])


def test_bench_data_that_is_no_folder_fails_in_one_line(capsys, tmp_path, monkeypatch):
    """--data a file, a FIFO, a link to nothing, in a missing folder or under a file: one line, exit 2,
    before the model is built and before anything is written."""
    import os

    from zsiqa import benchmark
    monkeypatch.setattr(benchmark, "Scorer", None)  # built after the set is checked: never reached
    (tmp_path / "file").write_text("mine")
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "nothing", tmp_path / "dangling")
    for data, match in [("file", "is a file, not a folder"), ("fifo", "is a FIFO, socket or device"),
                        ("dangling", "is a link to nothing"), ("missing/set", "missing does not exist"),
                        ("file/set", "file is a file; give a folder in an existing one")]:
        fails_one_line(capsys, lambda data=data: _bench_data(tmp_path / data), match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "fifo", "file"]
    assert (tmp_path / "file").read_text() == "mine"


def _damage(kind, folder):
    """Damage a complete set in `folder` in one way; returns the file the refusal names."""
    ref, dis = folder / "Train_Ref" / "A0001.bmp", folder / "Train_Dis" / "A0001_000001_00.bmp"
    label = folder / "Train_Label" / "A0001.txt"
    if kind == "unreadable":
        ref.write_bytes(b"not an image")
    elif kind == "missing":
        dis.unlink()
    elif kind == "truncated":
        dis.write_bytes(dis.read_bytes()[:-100])
    elif kind == "label":
        label.write_text(label.read_text().replace("A0001_000001_00.bmp", "A0001_000009_00.bmp"))
    elif kind == "extra":
        dis = folder / "Train_Dis" / "A0001_000002_00.bmp"
        dis.write_bytes((folder / "Train_Dis" / "A0001_000001_00.bmp").read_bytes())
    return {"unreadable": ref, "label": label}.get(kind, dis)


def test_bench_damaged_or_incomplete_set_fails_in_one_line(capsys, tmp_path, monkeypatch):
    """A --data set with the right marker but an unreadable, missing, truncated, extra or changed
    file is refused in one line naming it, before the model is built (it was timed and scored as
    the set, or ended in Pillow's traceback); the untouched set is reused."""
    import shutil

    from zsiqa import benchmark
    clean = tmp_path / "clean"
    pairs = benchmark.make_set(str(clean), 224, 1, 2)
    assert benchmark.make_set(str(clean), 224, 1, 2) == pairs
    monkeypatch.setattr(benchmark, "Scorer", None)
    for kind in ("unreadable", "missing", "truncated", "label", "extra"):
        folder = tmp_path / kind
        shutil.copytree(clean, folder)
        named = _damage(kind, folder)
        line = fails_one_line(capsys, lambda folder=folder: _bench_data(folder), "holds a damaged or incomplete set")
        assert f"first {named}:" in line, (kind, line)
    # a set whose making was interrupted has no marker yet: refused, not completed with other numbers
    (clean / benchmark.MARKER).unlink()
    fails_one_line(capsys, lambda: _bench_data(clean), "(or one whose making was interrupted)")
