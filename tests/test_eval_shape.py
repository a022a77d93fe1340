"""The eval command's code as issue 26 shaped it: its settings typed and frozen (EvalConfig, built
once by the command line, nothing past it sees argparse's namespace), the report's page from a
jinja2 template shipped as package data, and the bootstrap intervals from scipy.stats.bootstrap."""
import ast
import dataclasses

import numpy as np
import pytest
from scipy import stats as sp

from helpers import ROOT
from zsiqa import cli, config, report
from zsiqa import stats as zstats
from zsiqa.errors import UserError

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
EVALUATION = ("evaluate", "comparison", "config", "report", "stats", "results", "plots")


def _flags(*argv):
    return vars(cli.build_parser("eval").parse_args(["-dat", "dirs", *argv]))


def test_no_evaluation_module_reads_argparse_namespace():
    """Only the command line holds the namespace: no `args.x` in the evaluation's modules."""
    bad = []
    for name in EVALUATION:
        path = ROOT / "zsiqa" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "args":
                bad.append(f"{name}.py:{node.lineno} args.{node.attr}")
    assert not bad, bad


def test_every_eval_flag_has_a_typed_setting():
    flags = {**_flags(), "started": 0.0}
    made = config.EvalConfig.from_flags(flags)
    fields = {f.name for f in dataclasses.fields(config.EvalConfig)}
    assert set(flags) - {"robustness", "pct", "kinds", "pcts"} <= fields  # the robustness flags become variants
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.savedir = "elsewhere"
    assert made.variants == (("", 0),) and not made.sweep and made.worst_shown == 4 and made.name == "dinov1"


def test_robustness_flags_become_variants():
    sweep = config.EvalConfig.from_flags({**_flags("--kinds", "tra,rot", "--pcts", "1,3"), "started": 0.0})
    assert sweep.variants == (("", 0), ("tra", 1), ("tra", 3), ("rot", 1), ("rot", 3)) and sweep.sweep
    one = config.EvalConfig.from_flags({**_flags("-rob", "sca", "--label-higher-better", "no", "-s", "x",
                                                 "--report-worst", "2"), "started": 0.0})
    assert one.variants == (("sca", 1),) and not one.sweep and one.label_higher_better is False
    assert one.name == "x" and one.worst_shown == 2
    for argv, says in ((("-pct", "2"), "give -rob too"), (("--pcts", "2"), "give --kinds too"),
                       (("--kinds", "tra", "-rob", "tra"), "give one of the two"),
                       (("--kinds", "tra,tra"), "more than once"), (("--kinds", "blur"), "--kinds takes")):
        with pytest.raises(UserError, match=says):
            config.EvalConfig.from_flags({**_flags(*argv), "started": 0.0})


def test_file_keys_name_their_parts():
    key = config.FileKey(1, 2, "wsd")
    assert key.group == config.Group(1, 2) and key.group.variant == 2 and not key.layers
    assert key.layer_file() == config.FileKey(1, 2, "wsd", True) and key.layer_file().results_file() == key


# ---------------------------------------------------------------- the page's template

def test_page_html_lives_in_a_packaged_template():
    """report.py holds no HTML, style or script: the page is zsiqa/templates/report.html.j2, which
    a wheel carries (package data) and which escapes every value it is given."""
    source = (ROOT / "zsiqa" / "report.py").read_text()
    assert not any(tag in source for tag in ("<section", "<table", "<style>", "<script>", "addEventListener"))
    template = ROOT / "zsiqa" / "templates" / "report.html.j2"
    assert "<script>" in template.read_text()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["zsiqa"]
    assert any(template.relative_to(ROOT / "zsiqa").match(pattern) for pattern in data)
    assert any(d.startswith("jinja2") for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"])
    rows = [{"set": "<b>x</b>", "distance": "l2", "n": 1, "mean": 1.0, "std": 0.0, "median": 1.0, "ci95": [1.0, 1.0]}]
    page = report.page(report.Comparison({"l2": rows}, {"l2": {"<b>x</b>": {"<i>": 1.0}}}, {"l2": True}, "l2", {},
                                         "about <script>"))
    assert "<b>x</b>" not in page.replace("<b>&lt;b&gt;x&lt;/b&gt;</b>", "") and "<i>" not in page
    assert "about &lt;script&gt;" in page


# ---------------------------------------------------------------- bootstrap intervals

@pytest.mark.parametrize("n", [2, 3, 17, 250])
def test_bootstrap_intervals_are_scipys_percentile_intervals(n):
    """summarize's and median_difference's intervals are scipy.stats.bootstrap's percentile
    intervals over 2,000 resamples drawn from default_rng(seed)."""
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=n), rng.normal(size=n)
    for got, data, statistic in ((zstats.summarize(x, seed=3)["ci95"], x, np.mean),
                                 (zstats.median_difference(x, y, seed=3)[1], x - y, np.median)):
        want = sp.bootstrap((data,), statistic, n_resamples=2000, method="percentile",
                            rng=np.random.default_rng(3)).confidence_interval
        assert got == pytest.approx([want.low, want.high], rel=1e-12, abs=1e-15)


def test_bootstrap_interval_of_one_value_is_that_value():
    assert zstats.summarize([2.5])["ci95"] == [2.5, 2.5]
    assert zstats.median_difference([3.0], [1.0]) == (2.0, [2.0, 2.0])


def test_every_command_outside_the_command_line_takes_typed_settings():
    """The argparse namespace stops in cli.py: every command whose code lives in another module
    gets a frozen config.*Config built from its flags (eval, corr, bench); score and models run in
    cli.py itself."""

    outside = {name for name, command in cli.COMMANDS.items() if not command.run.startswith("zsiqa.cli:")}
    assert outside == set(cli.TYPED)
    argv = {"eval": ["-dat", "pipal", "--root", "x"], "corr": ["-f", "a.csv", "-f", "b.csv"], "bench": []}
    for name in outside:
        kind = getattr(config, cli.TYPED[name])
        settings = kind.from_flags(vars(cli.build_parser(name).parse_args(argv[name])))
        assert isinstance(settings, kind) and dataclasses.is_dataclass(settings)
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.json = True
