"""bench.py runs end to end at a tiny size (its speed figures are reported, never asserted)."""
import json

import bench


def test_bench_runs_tiny(capsys, tmp_path):
    bench.main(["--device", "cpu", "--model", "dinov1", "--size", "224", "--refs", "1", "--pairs", "2", "--loop-pairs", "1",
                "--batch-size", "2", "--forward-iters", "1", "--data", str(tmp_path / "set"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 2 and out["loop_pairs_timed"] == 1 and out["distances"] == ["l2", "cos", "skld", "jsd", "wsd"]
    for key in ("engine_pairs_per_s", "loop_pairs_per_s", "forward_windows_per_s", "speedup", "engine_share_of_forward"):
        assert out[key] > 0
    assert out["engine_vs_loop_max_rel_diff"] < 1e-4  # the two paths score the same pairs alike
    assert len(list((tmp_path / "set").glob("*.bmp"))) == 3
