"""The eval command's settings and the names its steps pass to one another.

`EvalConfig` is the command's flags, checked against one another once and frozen (the command
line builds it, `EvalConfig.from_flags`; nothing past it sees argparse). `FileKey` names one
file of a run (set, robustness variant, distance, per-layer or not) and `Group` one set under
one variant; `Scored` is what scoring did and `Finished` the finished files the summaries read.
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional

from zsiqa import results, robustness
from zsiqa.errors import UserError

REPORT_WORST = 4  # the worst images per method report.html shows without --report-worst


@dataclass(frozen=True)
class EvalConfig:
    """The eval command's settings (cli.FLAGS has each flag's meaning). `variants` is the run's
    robustness variants [(kind or '', pct)], the clean run first in a sweep (`sweep`: --kinds)."""
    # what is scored
    dataset: str
    root: str | None = None
    csv: str | None = None
    label_higher_better: bool | None = None
    ref_dir: str | None = None
    dis_dir: tuple = ()
    limit: int | None = None
    skip_missing: bool = False
    # the metric
    model: str = "dinov1"
    distance: str = "wsd"
    weights: str | None = None
    device: str = "auto"
    precision: str = "published"
    model_norm: bool = False
    layers: str | None = None
    resize: int | None = None
    baselines: str | None = None  # --baselines psnr,ssim,…: more columns of a label-free comparison (baselines.py)
    # how it runs
    batch_size: int | None = None
    workers: int | None = None
    compile: str = "auto"
    # the results
    saveas: str | None = None
    savedir: str = "results"
    overwrite: bool = False
    variants: tuple = (("", 0),)
    sweep: bool = False
    per_layer: bool = False
    # the outputs
    worst_maps: int | None = None
    report: str | None = None
    report_worst: int | None = None
    json: bool = False
    no_progress: bool = False
    started: float = 0.0  # time.perf_counter() when the arguments were parsed (a run's fixed cost counts from it)

    @property
    def name(self):
        """The name in the results file names: -s, else the model."""
        return self.saveas or self.model

    @property
    def worst_shown(self):
        """How many worst images per method the report shows: --report-worst K, 4 by default."""
        return REPORT_WORST if self.report_worst is None else self.report_worst

    @classmethod
    def from_flags(cls, flags):
        """The settings from the eval command's parsed flags {name: value} (`vars` of argparse's
        namespace); the robustness flags checked and turned into `variants` (UserError)."""
        flags = dict(flags)
        variants = variants_of(flags.pop("robustness"), flags.pop("pct"), flags.pop("kinds"), flags.pop("pcts"))
        hib, dis_dir = flags.pop("label_higher_better"), flags.pop("dis_dir")
        return cls(**flags, label_higher_better=None if hib is None else hib == "yes", dis_dir=tuple(dis_dir or ()),
                   variants=tuple(variants), sweep=len(variants) > 1)


def variants_of(kind, pct, kinds, pcts):
    """[(robustness kind or '', pct)] of -rob/-pct or a --kinds/--pcts sweep (the clean run
    first), each checked (robustness.check). A transform is chosen one way: -rob/-pct, or a
    sweep, each kind and magnitude once."""
    if pct is not None and not kind:
        raise UserError("-pct is the magnitude of -rob tra|sca|rot: give -rob too (a sweep takes --kinds and --pcts)")
    if pcts is not None and not kinds:
        raise UserError("--pcts is the magnitudes of a --kinds sweep: give --kinds too")
    if kinds and kind:
        raise UserError("-rob/-pct choose one transform and --kinds/--pcts a sweep: give one of the two")
    if not kinds:
        variants = [(kind, 1 if pct is None else pct)] if kind else [("", 0)]
    else:
        names = _listed("--kinds", kinds, str)
        magnitudes = _listed("--pcts", pcts or "1,2,4,8", int)
        bad = [k for k in names if k not in robustness.TRANSFORMS]
        if bad or not names or not magnitudes:
            raise UserError(f"--kinds takes {','.join(robustness.TRANSFORMS)} (got {kinds!r}) and --pcts at least "
                            "one integer")
        variants = [("", 0)] + [(k, p) for k in names for p in magnitudes]
    for k, p in variants:
        if k:
            robustness.check(k, p)
    return variants


def _listed(flag, spec, kind):
    """A comma list of a flag's values, each of `kind` and given once."""
    items = [x.strip() for x in spec.split(",") if x.strip()]
    try:
        values = [kind(x) if kind is str or len(x.lstrip("+-")) <= 18 else None for x in items]
    except ValueError:
        values = [None]
    if None in values:
        raise UserError(f"{flag} must be comma-separated integers, got {spec[:40]!r}")
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        raise UserError(f"{flag} lists {', '.join(twice)} more than once")
    return values


class Group(NamedTuple):
    """One set of a run (its index in Plan.sets) under one robustness variant (its index)."""
    set: int
    variant: int


class FileKey(NamedTuple):
    """One file a run writes: the results file of a set, variant and distance, or with `layers`
    its per-layer file (X_layers.csv beside X.csv)."""
    set: int
    variant: int
    distance: str
    layers: bool = False

    @property
    def group(self):
        return Group(self.set, self.variant)

    def layer_file(self):
        """The key of this results file's per-layer file."""
        return FileKey(self.set, self.variant, self.distance, True)

    def results_file(self):
        """The key of the results file (of a per-layer file: the one it sits beside)."""
        return FileKey(self.set, self.variant, self.distance)


@dataclass
class Scored:
    """What a run's scoring did, over all ranks: pairs scored, the (dis, ref) skipped mid-run
    per Group (undecodable with --skip-missing), the seconds it took and when it ended
    (time.perf_counter)."""
    count: int
    skipped: dict
    seconds: float
    ended: float

    def n_skipped(self, group):
        return len(self.skipped.get(group, ()))

    def rate(self):
        """This run's scoring rate, pairs/s; None when it scored nothing (every pair resumed)."""
        return round(self.count / self.seconds, 2) if self.count and self.seconds > 0 else None


@dataclass(frozen=True)
class Finished:
    """A run's finished results files, for its summary: the results file of each FileKey
    {key: path}, each file's record {path: record} and rows {path: [(dis, ref, mos, (values…))]},
    what scoring did (Scored) and the run's `time` and `run_id` {name: value}."""
    paths: dict
    records: dict
    rows: dict
    scored: Scored
    stamp: dict

    def scores(self, path):
        """A results file's rows as (dis, ref, mos, pred) with a number for pred, and how many
        were NaN or inf (kept in the file, left out of the statistics, warned about)."""
        rows, nonfinite = results.drop_nonfinite(path, self.rows[path], lambda r: r[3][0], lambda r: r[0])
        return [(dis, ref, mos, values[0]) for dis, ref, mos, values in rows], nonfinite


@dataclass(frozen=True)
class CorrConfig:
    """The corr command's settings (cli.FLAGS has each flag's meaning): `file` the results files
    (-f, then --published NAME's shipped files), `per_layer` a per-layer file, the label and
    prediction directions as given ('yes'/'no' or None), and the bootstrap's and report's options."""
    file: tuple
    published: tuple
    per_layer: Optional[str]
    dataset: Optional[str]
    byref: bool
    label_higher_better: Optional[str]
    pred_higher_better: Optional[str]
    plot: Optional[str]
    resample: Optional[str]
    seed: Optional[int]
    n_boot: Optional[int]
    report: Optional[str]
    json: bool
    started: float = 0.0

    @classmethod
    def from_flags(cls, flags):
        """The settings from the corr command's parsed flags {name: value}."""
        flags = dict(flags)
        return cls(**{**flags, "file": tuple(flags["file"] or ()), "published": tuple(flags["published"] or ())})


@dataclass(frozen=True)
class BenchConfig:
    """The bench command's settings (cli.FLAGS has each flag's meaning): the backbone and its
    distances, precision and device, the synthetic set (`size`, `refs`, `pairs`, or `data`, a
    folder that keeps it) and what is timed (`loop_pairs`, `forward_iters`, `via_run`)."""
    model: str
    distance: str
    device: str
    precision: str
    weights: Optional[str]
    size: int
    refs: int
    pairs: int
    loop_pairs: Optional[int]
    batch_size: Optional[int]
    workers: Optional[int]
    forward_iters: Optional[int]
    compile: str
    via_run: bool
    data: Optional[str]
    json: bool
    started: float = 0.0

    @classmethod
    def from_flags(cls, flags):
        """The settings from the bench command's parsed flags {name: value}."""
        return cls(**flags)
