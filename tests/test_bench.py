"""bench.py runs end to end at a tiny size (its speed figures are reported, never asserted)."""
import json

import bench


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
    import pytest
    for args, match in [(["--refs", "0"], "at least 1"), (["--pairs", "0"], "at least 1"),
                        (["--loop-pairs", "-1"], "at least 0"), (["--size", "100"], "at least 224"),
                        (["--batch-size", "0"], "at least 1"), (["--forward-iters", "0"], "at least 1")]:
        with pytest.raises(SystemExit) as e:
            bench.main(["--device", "cpu", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and match in err, (args, err)


def test_bench_data_folder_is_its_own_or_refused(capsys, tmp_path):
    """--data holding anything but a set made with the same settings is refused in one line (its
    images were timed and scored as the set asked for); the same settings reuse it."""
    import pytest

    from zsiqa import benchmark
    folder = tmp_path / "set"
    first = benchmark.make_set(str(folder), 224, 1, 2)
    assert benchmark.make_set(str(folder), 224, 1, 2) == first
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.png").write_bytes(b"x")
    for data, size in [(folder, "256"), (other, "224")]:
        with pytest.raises(SystemExit) as e:
            bench.main(["--device", "cpu", "--size", size, "--refs", "1", "--pairs", "2", "--data", str(data)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "give an empty or new folder" in err
    assert (other / "photo.png").read_bytes() == b"x" and not (other / "Train_Ref").exists()


def test_bench_without_the_loop_prints_no_nan(capsys):
    """--loop-pairs 0 (as docs/speed.md shows it): the loop is said to be untimed; no 'nan' or
    'None' printed for its rate, the speedup or the agreement."""
    bench.main(["--device", "cpu", "--model", "clip_vitb32", "--size", "224", "--refs", "1", "--pairs", "1",
                "--loop-pairs", "0", "--forward-iters", "1"])
    out = capsys.readouterr().out
    assert "not timed (--loop-pairs 0)" in out and "nan" not in out and "None" not in out
    assert "engine" in out and "pairs/s" in out
