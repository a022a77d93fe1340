"""calc_scores: the published per-image files reproduce SUMMARY.md; fits and options."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import calc_scores
from conftest import SHARED, needs_shared

RESULTS = SHARED / "reference_results"


def _summary_clean():
    """SUMMARY.md's clean table: {(dataset, method): (srcc, plcc, krcc)}."""
    text = (RESULTS / "SUMMARY.md").read_text()
    clean = text.split("## Clean")[1].split("## Robustness")[0]
    out = {}
    for line in clean.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and re.match(r"[\d.]+ /", cells[1]):
            for ds, cell in zip(("pipal", "live", "tid2013"), cells[1:], strict=False):
                if cell != "—":
                    out[(ds, cells[0])] = tuple(float(x) for x in cell.split("/"))
    return out


def _summary_robust():
    text = (RESULTS / "SUMMARY.md").read_text().split("## Robustness")[1]
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and re.match(r"[\d.]+ /", cells[1]):
            for ds, cell in zip(("pipal", "live", "tid2013"), cells[1:], strict=False):
                for kind, v in zip(("clean", "tra", "sca", "rot"), cell.split("/"), strict=False):
                    if v.strip() != "—":
                        out[(ds, cells[0], kind)] = float(v)
    return out


@needs_shared
@pytest.mark.parametrize("name", ["live_dinov1_l2", "live_psnr", "pipal_clip_vitb32_l2", "pipal_dinov1_wsd",
                                  "tid2013_clip_vitb32_cos"])
def test_published_files_reproduce_summary(name, capsys):
    dataset, method = name.split("_", 1)
    calc_scores.main(["-f", str(RESULTS / f"{name}.csv"), "--json"])
    got = json.loads(capsys.readouterr().out)
    want = _summary_clean()[(dataset, method)]
    assert got["n"] == {"pipal": 23200, "live": 779, "tid2013": 3000}[dataset]
    assert [round(got[k], 4) for k in ("srcc", "plcc", "krcc")] == list(want)


@needs_shared
def test_published_robustness_file_reproduces_summary(capsys):
    calc_scores.main(["-dat", "pipal", "-f", str(RESULTS / "pipal_dinov1_l2_tra-1.csv"), "--json"])
    got = json.loads(capsys.readouterr().out)
    assert round(got["srcc"], 3) == _summary_robust()[("pipal", "dinov1_l2", "tra")]


def _frame(tmp_path):
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 2, 60)
    mos = 80 / (1 + np.exp(3 * (pred - 1))) + rng.normal(0, 2, 60)  # higher pred → lower MOS
    refs = [f"r{i % 4}.png" for i in range(60)]
    f = tmp_path / "kadid10k_test_l2.csv"
    frame = pd.DataFrame({"dis": [f"d{i}.png" for i in range(60)], "ref": refs, "mos": mos, "pred": pred})
    frame.to_csv(f, index=False)
    return f, pred, mos, refs


def test_signs_byref_and_plot(tmp_path, capsys):
    f, pred, mos, refs = _frame(tmp_path)
    calc_scores.main(["-f", str(f), "--json", "--plot", str(tmp_path / "s.png")])
    got = json.loads(capsys.readouterr().out)
    assert got["dataset"] == "kadid10k" and got["label_higher_better"]
    assert got["srcc"] == pytest.approx(stats.spearmanr(-pred, mos)[0]) and got["srcc"] > 0.9
    assert got["plcc_logistic"] >= got["plcc"] - 1e-9  # the fit can only straighten the relation
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    calc_scores.main(["-f", str(f), "--json", "--byref"])
    by = json.loads(capsys.readouterr().out)
    per = [stats.spearmanr(-pred[[i for i in range(60) if refs[i] == r]],
                           mos[[i for i in range(60) if refs[i] == r]])[0] for r in sorted(set(refs))]
    assert by["refs"] == 4 and by["srcc"] == pytest.approx(np.mean(per))


def test_logistic_fit_recovers_a_logistic():
    x = np.linspace(-3, 3, 80)
    y = calc_scores.logistic5(x, 10, 1.5, 0.2, 0.3, 5)
    curve = calc_scores.fit_logistic(x, y)
    assert np.allclose(curve(x), y, atol=1e-6)
    assert calc_scores.fit_logistic(x[:5], y[:5]) is None


def test_bad_results_files(tmp_path, capsys):
    (tmp_path / "live_x.csv").write_text("a,b\n1,2\n")
    for argv, match in [(["-f", str(tmp_path / "none.csv")], "not found"),
                        (["-f", str(tmp_path / "live_x.csv")], "lacks column"),
                        (["-f", str(tmp_path / "other.csv")], "not found")]:
        with pytest.raises(SystemExit) as e:
            calc_scores.main(argv)
        assert e.value.code == 2 and match in capsys.readouterr().err
    (tmp_path / "mystery.csv").write_text("dis,ref,mos,pred\na,b,1,2\n")
    with pytest.raises(SystemExit):
        calc_scores.main(["-f", str(tmp_path / "mystery.csv")])
    assert "label direction" in capsys.readouterr().err


def test_plot_that_cannot_be_written_is_one_line(tmp_path, capsys):
    import calc_scores
    path = tmp_path / "pipal_x_l2.csv"
    rows = "".join(f"d{i}.bmp,r.bmp,{1500 + 10 * i},{0.5 - 0.01 * i * i}\n" for i in range(8))
    path.write_text("dis,ref,mos,pred\n" + rows)
    for target, match in [(tmp_path / "nodir" / "x.png", "cannot write"), (tmp_path / "x.xyz", "cannot write")]:
        with pytest.raises(SystemExit) as e:
            calc_scores.main(["-dat", "pipal", "-f", str(path), "--plot", str(target)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
