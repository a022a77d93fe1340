"""What an eval run scores (its plan): the sets — one dataset (labelled, or a label-free list) or
one label-free set per output folder (-dat dirs) — and each set's usable pairs, found from image
headers before the model loads (missing, unreadable or too small images named up front).
"""
import sys
from dataclasses import dataclass

from zsiqa import results
from zsiqa.config import EvalConfig
from zsiqa.datasets import load_dataset, load_dirs
from zsiqa.errors import UserError, warn_line
from zsiqa.images import pair_problems


def check_images(dataset, pairs, skip_missing, resize=None, variants=(("", 0),)):
    """List unusable pairs up front, from image headers only: missing or unreadable files,
    reference and distorted of different sizes, a side under 224 px (also after a shift's
    crop). Stop with one line unless --skip-missing, which scores the other pairs.

    Returns:
        the usable pairs [(ref, dis, label)], in order.
    """
    shrink = max((p for k, p in variants if k == "tra"), default=0)  # the largest shift crops the most
    why = [reason for reason, _ in pair_problems([(dataset.ref_path(r), dataset.dis_path(d)) for r, d, _ in pairs],
                                                 resize, shrink, warn=warn_line)]
    bad = [(d, w) for (_, d, _), w in zip(pairs, why, strict=False) if w]
    if not bad:
        return pairs
    kinds = sorted({w.split(" (")[0] for _, w in bad})
    examples = ", ".join(f"{d} ({w})" for d, w in bad[:3])
    msg = f"{len(bad)} of {len(pairs)} pair(s) unusable under {dataset.root}: {'; '.join(kinds)}; e.g. {examples}"
    if not skip_missing:
        raise UserError(msg + "; pass --skip-missing to score the other pairs")
    sys.stderr.write(f"warning: {msg}; skipping them\n")
    return [p for p, w in zip(pairs, why, strict=False) if not w]


@dataclass
class Plan:
    """What a run scores: its sets (datasets.Dataset: a labelled dataset, a label-free list, or
    one per output folder of -dat dirs), each set's usable pairs [(ref, dis, label)] and the
    number skipped up front. Pair i of the run (a job's index) is `index[i]` = (set, k)."""
    sets: list
    pairs: list
    skipped: list
    stamps: list  # per set, what each image is (results.image_stamps): rows of changed images are scored again

    def __post_init__(self):
        self.index = [(s, k) for s, pairs in enumerate(self.pairs) for k in range(len(pairs))]

    @property
    def labelled(self):
        return self.sets[0].labelled

    @property
    def name(self):
        return self.sets[0].name if len(self.sets) == 1 else "dirs"

    def image_key(self, s):
        """How set s names an image in comparisons: by its reference where each reference has one
        output (output folders: so that methods' outputs of one reference pair up), else by the
        distorted image (a label-free list with several outputs per reference)."""
        refs = [ref for ref, _, _ in self.pairs[s]]
        return (lambda dis, ref: ref) if len(set(refs)) == len(refs) else (lambda dis, ref: dis)

    def order(self, s):
        """Set s's pairs to score as results-file keys [(dis, ref)]."""
        return [(dis, ref) for ref, dis, _ in self.pairs[s]]

    def files(self):
        """Every pair of the run as paths on disk [(dis, ref)]: one list for one engine call."""
        return [(self.sets[s].dis_path(self.pairs[s][k][1]), self.sets[s].ref_path(self.pairs[s][k][0]))
                for s, k in self.index]


def load_sets(config: EvalConfig):
    """The run's sets: one dataset (labelled, or a label-free list), or -dat dirs' folders."""
    if config.dataset != "dirs":
        if config.ref_dir or config.dis_dir:
            raise UserError("--ref-dir/--dis-dir go with -dat dirs (score output folders against references)")
        return [load_dataset(config.dataset, config.root, csv_file=config.csv,
                             higher_is_better=config.label_higher_better)]
    if not config.ref_dir or not config.dis_dir:
        raise UserError("-dat dirs needs --ref-dir GT and --dis-dir OUT (the flag once per output folder)")
    if config.root or config.csv:
        raise UserError("-dat dirs takes --ref-dir and --dis-dir, not --root or --csv")
    return load_dirs(config.ref_dir, list(config.dis_dir), config.skip_missing,
                     lambda line: sys.stderr.write(line + "\n"), skip=[config.savedir])


def load_plan(config: EvalConfig):
    """The sets and the pairs to score: the first --limit of each set, the usable ones; the
    results folder is checked writable first, before any work."""
    results.check_writable(config.savedir)
    sets, pairs, skipped = [], [], []
    for dataset in load_sets(config):
        limited = dataset.pairs[: config.limit]
        results.check_names(dataset, limited)
        usable = check_images(dataset, limited, config.skip_missing, config.resize, config.variants)
        if not usable:  # kept: a method none of whose outputs can be read is ranked last, not dropped
            sys.stderr.write(f"warning: no pairs to score in {dataset.root}\n")
        sets.append(dataset)
        pairs.append(usable)
        skipped.append(len(limited) - len(usable))
    if not any(pairs):
        raise UserError("no pairs to score")
    return Plan(sets, pairs, skipped, [results.image_stamps(d, d.pairs) for d in sets])
