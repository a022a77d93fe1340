"""Choosing which blocks of a backbone are compared (`--layers 1-6,9`).

Blocks are numbered from 1 in forward order across all feature groups (a conv net's groups
of maps included: clip_rn50 has 5 blocks, ConvNeXt-Base 36). Keeping a subset restricts
every distance to those blocks' outputs: for the per-layer distances (l2, cos) the score is
the sum of the kept blocks' per-layer scores; skld, jsd, wsd and swd apply the same formulas
to the sub-stack, which is outside the published protocol unless every block is kept.
"""
import re

import torch

from zsiqa.errors import UserError
from zsiqa.options import is_integer

_ITEM = re.compile(r"^\s*(\d{1,9})\s*(?:-\s*(\d{1,9})\s*)?$")  # a longer number is no block


def parse_layers(spec, n_layers):
    """A block selection → sorted 0-based indices.

    Args:
        spec: '1-6,9' (1-based, ranges inclusive), 'all', or a sequence of 1-based ints.
        n_layers: how many blocks the backbone has.

    Returns:
        tuple of 0-based block indices in forward order (duplicates merged).

    Raises:
        UserError: empty, malformed, reversed ('3-1') or out of range (0, > n_layers).
    """
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return tuple(range(n_layers))
    if _is_int(spec):
        spec = [spec]
    elif not isinstance(spec, (str, list, tuple, range)):
        raise UserError(f"bad layer selection {_shown(spec)}: give a string like '1-6,9', an integer or a list "
                        "of integers")
    items = spec.split(",") if isinstance(spec, str) else [_item(k) for k in spec]
    picked = set()
    for item in items:
        m = _ITEM.match(item)
        if not m:
            raise UserError(f"bad layer selection {_shown(spec)}: {_shown(item.strip())} is not N or N-M "
                            f"(blocks 1-{n_layers})")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if lo > hi:
            raise UserError(f"bad layer selection {_shown(spec)}: range {lo}-{hi} runs backwards")
        if lo < 1 or hi > n_layers:
            raise UserError(f"bad layer selection {_shown(spec)}: blocks are numbered 1-{n_layers}")
        picked.update(range(lo - 1, hi))
    if not picked:
        raise UserError(f"bad layer selection {_shown(spec)}: no block chosen (blocks 1-{n_layers})")
    return tuple(sorted(picked))


def _shown(spec):
    """The selection as the messages quote it: at most 40 characters, and printable even when
    it holds an integer Python will not turn into text (over 4,300 digits)."""
    try:
        text = repr(spec)
    except ValueError:
        return "(a number too large to print)"
    return text if len(text) <= 40 else text[:37] + "..."


def _item(k):
    """One block number of a sequence as text for the parser ('?' for an integer too large to
    print: int() refuses to write more than 4,300 digits)."""
    if not _is_int(k):
        return repr(k)
    return str(int(k)) if abs(int(k)) < 10**9 else "?"


def _is_int(k):
    """An integer block number: Python, numpy or 0-d integer tensor (not a bool)."""
    if torch.is_tensor(k):
        return k.dim() == 0 and not k.is_floating_point() and k.dtype != torch.bool
    return is_integer(k)


def chosen_layers(spec, n_layers):
    """`parse_layers`, or None when every block is chosen: all blocks is the default, exactly
    (no selection step at all)."""
    keep = parse_layers(spec, n_layers)
    return None if len(keep) == n_layers else keep


def backbone_layers(spec, backbone, sizes):
    """The blocks to compare of a backbone with feature groups of `sizes` layers (`chosen_layers`;
    None for all). One rule for Scorer and PerceptualLoss: an embedding is one output, with no
    blocks to choose from."""
    if spec is None:
        return None
    if backbone.output == "embed":
        raise UserError(f"{backbone.name} compares one embedding: it has no blocks to choose")
    return chosen_layers(spec, sum(sizes))


def as_groups(feats, keep, sizes):
    """An extractor's output (a tensor or a list of groups) → the list of groups of the chosen
    blocks (`select_layers`)."""
    return select_layers(list(feats) if isinstance(feats, (list, tuple)) else [feats], keep, sizes)


def group_sizes(feats):
    """Feature groups (a tensor [N, L, ...] or a list of them) → layers per group."""
    return tuple(f.shape[1] for f in (feats if isinstance(feats, (list, tuple)) else [feats]))


def select_layers(feats, keep, sizes):
    """Keep only the chosen blocks of feature groups.

    Args:
        feats: list of groups [N, L_g, ...] in forward order.
        keep: sorted 0-based global block indices, or None for all.
        sizes: layers per group (`group_sizes`).

    Returns:
        list of groups: untouched when whole, sub-stacks when partly kept, dropped when empty.
    """
    if keep is None:
        return feats
    out, start = [], 0
    for f, size in zip(feats, sizes, strict=True):
        local = [k - start for k in keep if start <= k < start + size]
        start += size
        if len(local) == size:
            out.append(f)
        elif local:
            out.append(f.index_select(1, torch.tensor(local, device=f.device)))
    return out
