"""bench.py runs end to end at a tiny size (its speed figures are reported, never asserted)."""
import json

import bench


def test_bench_runs_tiny(capsys, tmp_path):
    bench.main(["--device", "cpu", "--model", "dinov1", "--size", "224", "--refs", "1", "--pairs", "2",
                "--loop-pairs", "1",
                "--batch-size", "2", "--forward-iters", "1", "--data", str(tmp_path / "set"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 2 and out["loop_pairs_timed"] == 1
    assert out["distances"] == ["l2", "cos", "skld", "jsd", "wsd"]
    for key in ("engine_pairs_per_s", "loop_pairs_per_s", "forward_windows_per_s", "speedup",
                "engine_share_of_forward"):
        assert out[key] > 0
    assert out["engine_vs_loop_max_rel_diff"] < 1e-4  # the two paths score the same pairs alike
    assert len(list((tmp_path / "set").glob("*.bmp"))) == 3


def test_bench_refuses_bad_sizes(capsys):
    import pytest
    for args, match in [(["--refs", "0"], "at least 1"), (["--pairs", "0"], "at least 1"),
                        (["--loop-pairs", "-1"], "at least 0"), (["--size", "100"], "at least 224"),
                        (["--batch-size", "0"], "at least 1"), (["--forward-iters", "0"], "at least 1")]:
        with pytest.raises(SystemExit) as e:
            bench.main(["--device", "cpu", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and match in err, (args, err)
