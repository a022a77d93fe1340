"""The command line: `zsiqa score|eval|corr|bench|models` (also `python -m zsiqa`), and the four
scripts run_single_img.py, run.py, calc_scores.py and bench.py, which call the same commands.

Every flag is defined once, in FLAGS; a command lists the flags it takes (a benchmark may set
another default), so one setting has one name and one check in every command. Arguments are
parsed and checked before anything heavy is imported: `--help` and a usage error never load
torch. A UserError or a dependency that is not installed ends the command with one `error:` line
and exit code 2; Ctrl-C with 130; a reader that stopped early (`| head`) quietly with 141
(`guarded`).
"""
import argparse
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import zsiqa
from zsiqa.errors import ImageNoteWarning, ScoreWarning, UserError, warn_line
from zsiqa.exits import guarded
from zsiqa.jsontext import to_json
from zsiqa.options import MAX_RESIZE, MAX_WORKERS
from zsiqa.pairing import check_name

try:  # the flags' choices need Pillow and numpy: without one, every entry point says so in one line
    from PIL import Image

    from zsiqa.datasets import LAYOUTS
    from zsiqa.robustness import TRANSFORMS
    MISSING = None
except ImportError as e:
    if not e.name or e.name.split(".")[0] == "zsiqa":
        raise
    MISSING, LAYOUTS, TRANSFORMS, Image = e, {}, {}, None


class ArgParser(argparse.ArgumentParser):
    """argparse with its usage errors turned into UserError (one line, exit 2); the command's
    text (with its examples) is shown by --help as written."""

    def __init__(self, doc, **kwargs):
        super().__init__(description=doc.strip(), formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        raise UserError(message)


def int_in(low=None, high=None, low_why=""):
    """An argparse type: an integer in [low, high] (None: unbounded), read safely whatever its
    length (int() refuses over 4,300 digits; anything over 18 digits is out of any range here),
    else a one-line usage error; `low_why` says why the lower bound is what it is."""
    def parse(text):
        digits = text.strip().removeprefix("-").removeprefix("+")
        if not (digits.isascii() and digits.isdigit()):
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}")
        if len(digits) > 18:
            raise argparse.ArgumentTypeError(f"{text.strip()[:20]}… ({len(digits)} digits) is out of range")
        value = int(text)
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}{low_why}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value
    return parse


def file_name(text):
    """An argparse type for a name that goes into file names (-s): no path separator, not hidden."""
    try:
        return check_name(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).replace("method name", "name")) from None


def non_empty(text):
    """An argparse type for a path or name: an empty value (an unset shell variable) is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset variable?)")
    return text


def figure_file(text):
    """An argparse type for a figure's path: '.png' added to a name without an extension (as
    matplotlib would, silently); a folder or a format matplotlib cannot write refused before any work."""
    text = non_empty(text)
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name such as "
                                         f"{os.path.join(text, 'plot.png')}")
    ext = os.path.splitext(text)[1][1:].lower()
    if not ext:
        return text + ".png"
    from matplotlib.backend_bases import FigureCanvasBase  # heavy: only when --plot is given
    known = set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"}  # pgf runs a LaTeX install
    if ext not in known:
        raise argparse.ArgumentTypeError(f"cannot write a .{ext} figure; use one of {', '.join(sorted(known))}")
    return text


YES_NO = ["yes", "no"]

# name → (option strings, add_argument options): the one definition of each flag
FLAGS = {
    # what is scored
    "ref": (("-ref", "--ref"), dict(type=non_empty, help="reference image")),
    "dis": (("-dis", "--dis"), dict(type=non_empty, help="distorted image (same size as the reference)")),
    "dataset": (("-dat", "--dataset"), dict(required=True, help="layout: " + ", ".join([*LAYOUTS, "dirs"]))),
    "root": (("--root",), dict(type=non_empty, help="dataset folder (csv: paths are relative to it; default the "
                                                    "CSV's folder)")),
    "csv": (("--csv",), dict(type=non_empty, help="-dat csv: the list (columns ref, dis, mos or dmos)")),
    "ref_dir": (("--ref-dir",), dict(type=non_empty, help="-dat dirs: the reference (ground-truth) folder")),
    "dis_dir": (("--dis-dir",), dict(action="append", type=non_empty, metavar="[NAME=]PATH",
                                     help="-dat dirs: an output folder (one method) to score against --ref-dir; "
                                          "repeat per method")),
    "limit": (("--limit",), dict(type=int_in(1), help="only the first N pairs (-dat dirs: of each output folder)")),
    "skip_missing": (("--skip-missing",), dict(action="store_true", help="score the usable pairs instead of "
                                               "stopping at missing, unreadable or mis-sized images")),
    # the metric
    "model": (("-m", "--model"), dict(default="dinov1", help="backbone (`zsiqa models` lists them; default dinov1)")),
    "eval_model": (("-m", "--model"), dict(default="dinov1", help="backbone (`zsiqa models` lists them; default "
                                           "dinov1), or a classical baseline: psnr, ssim, ms_ssim, lpips_alex")),
    "baselines": (("--baselines",), dict(metavar="LIST", help="without labels: also rank these classical baselines "
                                         "(comma list of psnr, ssim, ms_ssim, lpips_alex; needs torchmetrics)")),
    "distance": (("-d", "--distance", "--distances"), dict(default="wsd", help="distance, comma list or 'all' "
                                                           "(default %(default)s)")),
    "layers": (("--layers",), dict(metavar="SPEC", help="compare only these blocks, 1-based, e.g. 1-6,9 (default "
                                   "all; a subset is outside the published protocol for skld/jsd/wsd/swd)")),
    "resize": (("-r", "--resize"), dict(type=int_in(224, MAX_RESIZE, " (the window size)"), default=None,
                                        metavar="N", help="resize both images to N×N first (224 ≤ N ≤ "
                                                          f"{MAX_RESIZE}; off by default, as published)")),
    "model_norm": (("--model-norm",), dict(action="store_true", help="normalise windows with the model's own "
                                           "mean/std (not the published protocol)")),
    "weights": (("--weights",), dict(type=non_empty, help="checkpoint file (default: $ZSIQA_WEIGHTS_DIR, the "
                                                          "library caches, then a download)")),
    # how it runs
    "device": (("--device",), dict(default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")),
    "precision": (("--precision",), dict(default="published", help="published (default: as the paper ran), fp32, "
                                                                   "bf16 or fp16")),
    "batch_size": (("--batch-size",), dict(type=int_in(1), default=None,
                                           help="windows per forward pass (default 256 on a GPU, 16 on a CPU)")),
    "workers": (("--workers",), dict(type=int_in(0, MAX_WORKERS), default=None,
                                     help="image-decoding processes (default 8 on a GPU, 0 on a CPU)")),
    "compile": (("--compile",), dict(choices=["auto", "on", "off"], default="auto", help="compile the backbone "
                                     "(auto: on CUDA when at least 200,000 pairs are to be scored)")),
    # evaluation
    "saveas": (("-s", "--saveas"), dict(type=file_name, help="name used in the results file names (default: the "
                                                             "model)")),
    "savedir": (("-sdir", "--savedir"), dict(default="results", type=non_empty,
                                             help="folder for results files (default results/)")),
    "overwrite": (("--overwrite",), dict(action="store_true", help="discard earlier rows of the results files "
                                         "instead of resuming")),
    "robustness": (("-rob", "--robustness"), dict(choices=list(TRANSFORMS), help="apply a shift/zoom/rotation "
                                                  "when loading")),
    "pct": (("-pct", "--pct"), dict(type=int_in(), default=None,
                                    help="its magnitude (percent, or degrees for rot; default 1)")),
    "kinds": (("--kinds",), dict(help="sweep: comma list of tra,sca,rot (with --pcts); the clean run is included")),
    "pcts": (("--pcts",), dict(default=None, help="sweep magnitudes (default 1,2,4,8)")),
    "per_layer": (("--per-layer",), dict(action="store_true", help="also write X_layers.csv beside each l2/cos "
                                         "results file X.csv: per-block distances")),
    "label_higher_better": (("--label-higher-better", "--higher-is-better"), dict(
        choices=YES_NO, help="label direction (default: from the layout, the record, or mos yes / dmos no)")),
    "pred_higher_better": (("--pred-higher-better",), dict(choices=YES_NO, help="predictions are similarities "
                                                           "(default: from the record, or the file name, e.g. psnr)")),
    # outputs
    "maps": (("--maps",), dict(metavar="DIR", type=non_empty, help="write per distance DIR/<distance>.npy (map "
                               "at the image's size) and a heatmap DIR/<distance>.png")),
    "worst_maps": (("--maps",), dict(type=int_in(1, 1000), metavar="N", help="without labels: write the spatial "
                                     "maps of each method's N worst pairs (by the first distance) into "
                                     "<sdir>/<method>_<name>_maps/")),
    "report": (("--report",), dict(type=non_empty, metavar="DIR", help="without labels: write a comparison report "
                                   "into DIR: scores.csv, report.md, table.tex, report.html")),
    "report_worst": (("--report-worst",), dict(type=int_in(0, 100), metavar="K", help="the worst images "
                                               "per method shown in report.html (default 4)")),
    "json": (("--json",), dict(action="store_true", help="print the result as JSON")),
    "no_progress": (("--no-progress",), dict(action="store_true", help="no progress bar")),
    "list_models": (("--list-models",), dict(action="store_true", help="list the registered backbones and exit")),
    "wide": (("--wide",), dict(action="store_true", help="also the architecture and weights file of each (wider than "
                                                     "100 columns)")),
    # correlations of a file
    "corr_dataset": (("-dat", "--dataset"), dict(help=f"layout, for the label's direction ({', '.join(LAYOUTS)}); "
                                                      "default from the record or the file name")),
    "file": (("-f", "--file"), dict(type=non_empty, action="append", help="results file with header "
                                    "dis,ref,mos,pred; repeat to compare metrics on the same pairs")),
    "published": (("--published",), dict(metavar="NAME", type=non_empty, action="append", help="one of the paper "
                                         "authors' per-image files shipped with zsiqa, by name (`list`: their names); "
                                         "repeat, or add -f files, to compare metrics")),
    "resample": (("--resample",), dict(choices=["pairs", "refs"], help="several files: what a bootstrap resample "
                                       "draws (default refs when references repeat, else pairs)")),
    "seed": (("--seed",), dict(type=int_in(0), help="several files: the bootstrap's seed (default 0)")),
    "n_boot": (("--n-boot",), dict(type=int_in(1, 10**6), help="several files: bootstrap resamples (default "
                                   "2000)")),
    "corr_report": (("--report",), dict(type=non_empty, metavar="DIR", help="write the comparison of the files' "
                                        "metrics into DIR: report.md, table.tex, report.html")),
    "per_layer_file": (("--per-layer",), dict(metavar="FILE", type=non_empty,
                                              help="a per-layer file X_layers.csv: SRCC/PLCC per block")),
    "byref": (("--byref",), dict(action="store_true", help="average the coefficients over references")),
    "plot": (("--plot",), dict(type=figure_file, help="write a scatter plot (PNG unless named otherwise) with "
                                                      "the fitted logistic curve (--per-layer: SRCC against "
                                                      "the block)")),
    # the benchmark
    "size": (("--size",), dict(type=int_in(224, 4096, " (the window size)"), default=288,
                               help="side of the synthetic square images in px (default 288, as PIPAL)")),
    "refs": (("--refs",), dict(type=int_in(1, 10**6), default=20, help="reference images (default 20)")),
    "pairs": (("--pairs",), dict(type=int_in(1, 10**7), default=2000,
                                 help="distorted images, spread over the references (default 2000)")),
    "loop_pairs": (("--loop-pairs",), dict(type=int_in(0), default=None, help="pairs timed with the one-pair loop "
                                           "(default 100 on a GPU, 4 on a CPU)")),
    "forward_iters": (("--forward-iters",), dict(type=int_in(1), default=None, help="timed batches of the "
                                                 "forward-only figure (default 30 on a GPU, 2 on a CPU)")),
    "via_run": (("--via-run",), dict(action="store_true", help="also time the eval command end to end on the same "
                                     "set (a PIPAL layout), as a user's run")),
    "data": (("--data",), dict(type=non_empty, help="folder for the synthetic set (default a temporary one; "
                                                    "reused if present)")),
}

PUBLISHED_FIVE = "l2,cos,skld,jsd,wsd"
NONFINITE_EXIT = 3  # the score command's exit code when a score is NaN or inf (2 is bad input)


@dataclass(frozen=True)
class Command:
    """A subcommand: its --help text, its flags (FLAGS names; (name, {option: value}) to set
    another default) and where its code is ('module:function', imported once parsed)."""
    doc: str
    flags: tuple
    run: str
    defaults: dict = field(default_factory=dict)


SCORE_DOC = """Score one reference/distorted pair with a foundation-model feature distance.

  zsiqa score -ref ref.png -dis dis.png -m dinov1 -d wsd
  zsiqa score -ref ref.png -dis dis.png -m clip_vitb32 -d all --json
  zsiqa score -ref ref.png -dis dis.png -d l2,cos --layers 1-6,9 --maps out/

Prints one `distance<TAB>score` line per distance (higher = more different), or JSON.
All distances come from one feature pass. Exit code 2 on bad input, with one line saying why;
3 when a score is NaN or inf (an overflow at half precision: try --precision fp32), with one
warning line (JSON gives such a score as null).
(run_single_img.py is the same command.)"""

EVAL_DOC = """Evaluate a backbone and distances on an IQA dataset: per-pair results files, correlations.

  zsiqa eval -dat live --root /data/LIVE -m dinov1 -d all
  zsiqa eval -dat pipal --root /data/PIPAL -m clip_vitb32 -d l2 -rob tra -pct 1
  zsiqa eval -dat tid2013 --root /data/TID2013 -m dinov1 -d wsd --kinds tra,sca,rot --pcts 1,2,4,8
  zsiqa eval -dat dirs --ref-dir GT --dis-dir OUT_A --dis-dir OUT_B -m dinov1 -d wsd

Writes <sdir>/<dataset>_<name>[_<rob>-<pct>].csv (header dis,ref,mos,pred; paths relative to
--root) with its record of settings beside it (.json), prints one summary row per distance
(SRCC, PLCC, KRCC, logistic PLCC, pairs/s) and appends it to <sdir>/summary.csv. An
interrupted run resumes where it stopped when the settings match; a run locks its files.
Under torchrun the pairs are sharded over the ranks and rank 0 writes the same files as one
process would.

Without labels (-dat dirs: output folders paired with a reference folder by file name; or
-dat csv with only ref,dis columns) every set gets <sdir>/<set>_<name>_<distance>[_<rob>-<pct>].csv
(header dis,ref,pred), a table ranking the sets per distance (mean, bootstrap CI, Wilcoxon
against the best, Holm-corrected) in <sdir>/summary_unlabelled.csv, and a bar chart; --report DIR
writes a comparison a paper can use (scores.csv, report.md, table.tex, report.html), --maps N
the spatial maps of each method's N worst pairs.

--layers 1-6,9 compares only those blocks (recorded). --per-layer also writes X_layers.csv
beside each l2/cos results file X.csv: the per-block distances, summing to X.csv's pred.
(run.py is the same command; docs/commands.md has the details.)"""

CORR_DOC = """Correlations between predictions and labels from a results file (`dis,ref,mos,pred`).

  zsiqa corr -dat pipal -f results/pipal_dinov1_wsd.csv [--byref] [--json] [--plot out.png]
  zsiqa corr --per-layer results/pipal_dinov1_l2_layers.csv [--json] [--plot srcc.png]
  zsiqa corr -f results/pipal_dinov1_wsd.csv -f results/pipal_clip_vitb32_l2.csv [--resample refs] [--json]
            [--report DIR]
  zsiqa corr --published pipal_dinov1_wsd      (--published list: the authors' files shipped with zsiqa)

SRCC, PLCC (plain Pearson) and KRCC over all pairs, signed so that agreement is positive,
plus PLCC after the standard 5-parameter logistic fit. --byref averages each coefficient over
references instead. The label's direction comes from -dat or --label-higher-better when
given, else from the file's record (X.json beside X.csv), else from the file name's dataset
prefix (published files have no record); a prediction column from a similarity metric (PSNR,
SSIM, …: higher = better) is flipped too. --per-layer gives SRCC and PLCC per block.
Several -f (same dataset) print one table on the pairs every file has: each coefficient with
a 95 % bootstrap interval, and each metric's SRCC and PLCC against the best's (paired
bootstrap, Holm-corrected); --resample refs (the default where references repeat) draws
reference images with all their pairs (docs/metrics_compare.md).
(calc_scores.py is the same command.)"""

BENCH_DOC = """Throughput: the batched engine against the one-pair loop, on a synthetic PIPAL-like set,
plus the backbone's own forward throughput.

  zsiqa bench                                   # dinov1, the five published distances, 288 px, 20 refs, 2000 pairs
  zsiqa bench --device cpu --refs 2 --pairs 16 --loop-pairs 4 --json
  zsiqa bench --device cpu --model clip_vitb32 --refs 1 --pairs 24 --loop-pairs 0 --via-run

(a) engine: Scorer.score_files over every pair; (b) loop: one pair at a time, one window per
forward pass, references re-encoded (its largest difference to the engine's scores is shown); (c)
forward only: random windows through the backbone; (d) with --via-run: the eval command end to
end on the same set (written in PIPAL's layout), its own scoring rate and its time outside
scoring. Weights are seeded random by default (speed does
not depend on their values); the default distances are the five published ones, whose cost
is what a reproduction pays. (bench.py is the same command.)"""

MODELS_DOC = """List the registered backbones. The table fits 100 columns: name, protocol, distances,
published GPU precision and feature shape at 224 px; --wide adds the architecture and weights
file, --json gives every detail."""

METRIC = ("model", "distance", "weights", "device", "precision", "model_norm", "layers", "resize")
COMMANDS = {
    "score": Command(SCORE_DOC, ("ref", "dis", *METRIC, "maps", "json", "list_models"), "zsiqa.cli:score_pair"),
    "eval": Command(EVAL_DOC, ("dataset", "root", "csv", "label_higher_better", "ref_dir", "dis_dir", "eval_model",
                               *METRIC[1:], "baselines",
                               "saveas", "savedir", "overwrite", "robustness", "pct", "kinds", "pcts", "batch_size",
                               "workers", "limit", "skip_missing", "per_layer", "compile", "worst_maps", "report",
                               "report_worst", "json", "no_progress"),
                    "zsiqa.evaluate:main"),
    "corr": Command(CORR_DOC, ("corr_dataset", "file", "published", "per_layer_file", "byref", "label_higher_better",
                               "pred_higher_better", "plot", "resample", "seed", "n_boot", "corr_report", "json"),
                    "zsiqa.correlate:main"),
    "bench": Command(BENCH_DOC, ("device", "model", "distance", "precision", "weights", "size", "refs", "pairs",
                                 "loop_pairs", "batch_size", "workers", "forward_iters", "compile", "via_run", "data",
                                 "json"),
                     "zsiqa.benchmark:main",
                     defaults={"distance": PUBLISHED_FIVE, "weights": "random", "compile": "off"}),
    "models": Command(MODELS_DOC, ("json", "wide"), "zsiqa.cli:models"),
}


TYPED = {"eval": "EvalConfig", "corr": "CorrConfig", "bench": "BenchConfig"}  # config.py: each command's settings


def build_parser(name, prog=None):
    """The parser of command `name`: its text and its flags, each as FLAGS defines it."""
    command = COMMANDS[name]
    parser = ArgParser(command.doc, prog=prog)
    for flag in command.flags:
        strings, options = FLAGS[flag]
        options = {**options, "dest": flag.removeprefix("corr_").removeprefix("eval_").removesuffix("_file")}
        if flag in command.defaults:
            options["default"] = command.defaults[flag]
        parser.add_argument(*strings, **options)
    return parser


def quiet_library_warnings():
    """The clip package's pkg_resources import and timm's deprecation notes are noise on a
    command's stderr; real problems still raise."""
    for pattern in (".*pkg_resources.*", ".*deprecated.*", ".*Importing from timm.*"):
        warnings.filterwarnings("ignore", message=pattern)
    # images of 89-179 Mpx are read (the engine compares big images block by block); larger
    # ones are still refused by Pillow's guard, in one line
    if Image is not None:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def run_command(name, argv, prog=None):
    """Parse `argv` for command `name`, then import and run its code (`guarded`). Returns its exit code."""
    quiet_library_warnings()

    def call():
        if MISSING is not None:
            raise MISSING
        args = build_parser(name, prog).parse_args(argv)
        args.started = time.perf_counter()  # what a command reports as its fixed cost is counted from here
        if name in TYPED:  # a command's code takes its settings typed and checked, not argparse's namespace
            from zsiqa import config
            args = getattr(config, TYPED[name]).from_flags(vars(args))
        module, function = COMMANDS[name].run.split(":")
        __import__(module)
        with warnings.catch_warnings():  # a command says in its own line which scores are NaN or inf, and
            warnings.simplefilter("ignore", ScoreWarning)  # which images are rotated or animated (once, up front)
            warnings.simplefilter("ignore", ImageNoteWarning)
            return getattr(sys.modules[module], function)(args)
    return guarded(call)


def script(name, prog):
    """The main() of a top-level script (`prog`, e.g. run.py): command `name` on sys.argv (or
    `argv`), exiting with its code (SystemExit only when it is not 0, so in-process callers get
    0 back)."""
    def main(argv=None):
        code = run_command(name, sys.argv[1:] if argv is None else list(argv), prog)
        if code:
            sys.exit(code)
        return code
    return main


def _raise(error):
    raise error


def first_sentence(doc):
    """A command's description up to its first full stop, on one line (zsiqa --help)."""
    text = " ".join(doc.split())
    return text.split(". ")[0].rstrip(".") + "."


def main(argv=None):
    """`zsiqa COMMAND ...` and `python -m zsiqa COMMAND ...`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["--version"], ["-V"]):
        sys.exit(guarded(lambda: print(f"zsiqa {zsiqa.__version__}")))
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            sys.stderr.write(f"error: unknown command {argv[0]!r}: use one of {', '.join(COMMANDS)} (zsiqa --help)\n")
            sys.exit(2)
        usage = ("usage: zsiqa {" + ",".join(COMMANDS) + "} ...  (zsiqa COMMAND --help for each; zsiqa --version)\n\n"
                 + "".join(f"  {n:7} {first_sentence(c.doc)}\n" for n, c in COMMANDS.items()))
        sys.exit(guarded(lambda: print(usage, end="") if MISSING is None else _raise(MISSING)))
    code = run_command(argv[0], argv[1:], prog=f"zsiqa {argv[0]}")
    if code:
        sys.exit(code)
    return code


# ---------------------------------------------------------------- the two small commands

def models(args):
    """`zsiqa models`: the registry as a table, or JSON."""
    from zsiqa.models import format_model_table, list_models
    rows = list_models()
    print(to_json(rows, indent=1) if args.json else format_model_table(rows, getattr(args, "wide", False)))


def score_pair(args):
    """`zsiqa score`: one pair, one line per distance (or JSON), and its maps with --maps."""
    if args.list_models:
        return models(args)
    if not args.ref or not args.dis:
        raise UserError("both -ref and -dis are required (or --list-models)")
    if args.maps:
        from zsiqa import plots
        plots.check_folder(args.maps)  # before any work: an unwritable folder fails at once
    from zsiqa.distances import parse_distances
    from zsiqa.images import pair_problems, to_float
    from zsiqa.models import get_backbone
    from zsiqa.scorer import Scorer
    parse_distances(args.distance, get_backbone(args.model))  # names and images before the weights are read
    (why, path), = pair_problems([(args.ref, args.dis)], args.resize, warn=warn_line)
    if why:
        raise UserError(f"image not found: {path}" if why == "missing" else f"cannot read image {path}: {why}" if path
                        else f"{args.ref} / {args.dis}: {why}")
    scorer = Scorer(args.model, args.distance, device=args.device, precision=args.precision,
                    weights=args.weights, resize=args.resize, workers=0, model_norm=args.model_norm, layers=args.layers,
                    dtype="float64")  # the printed digits: the float64 mean of the window scores
    scores = scorer.score([args.dis], [args.ref])
    values = {d: float(v[0]) for d, v in scores.items()}
    if args.json:
        print(to_json({"model": args.model, "scores": values}))
    else:
        sys.stdout.write("".join(f"{d}\t{v:.10g}\n" for d, v in values.items()))
    if args.maps:
        written = plots.write_maps(scorer.maps(args.dis, args.ref), to_float(scorer.image_tensor(args.dis)), args.maps,
                                   scorer.backbone.name, values)
        sys.stderr.write(f"wrote {len(written)} files to {args.maps}\n")
    bad = {d: 1 for d, v in values.items() if not math.isfinite(v)}
    if bad:  # printed as nan/inf (JSON null); exit code 3, not 0, so that a script notices
        sys.stderr.write(f"warning: {scorer.nonfinite_note(bad, 1)}\n")
        return NONFINITE_EXIT
    return 0
