"""Every chart the tool draws, as PNG files: correlation scatter, SRCC per block, method means
with intervals, robustness sweeps, spatial heatmaps.

matplotlib is imported on first use (it is heavy, and only plotting needs it) with the Agg
backend, so no display is needed. A chart that cannot be written is one UserError line.
"""
import base64
import io
import os
import tempfile

import numpy as np
from PIL import Image

from zsiqa.errors import UserError, writing
from zsiqa.results import write_atomic
from zsiqa.stats import agreement_sign, fit_logistic

LITERAL = {"parse_math": False, "usetex": False}  # names and titles drawn as written: a $ is a dollar, not math

SWEEP_TITLES = {"tra": "translation (% of width)", "sca": "zoom-in (%)", "rot": "rotation (degrees)"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, plt, **options):
    """Save the figure to `path` (atomically, `write_atomic`: a symlink there is replaced, an
    interruption leaves the old file) or to a binary file object, and close it."""
    try:
        with writing(path):
            if isinstance(path, (str, os.PathLike)):
                buffer = io.BytesIO()
                fig.savefig(buffer, format=os.path.splitext(path)[1][1:].lower() or None, **options)
                write_atomic(path, buffer.getvalue())
            else:
                fig.savefig(path, **options)
    finally:
        plt.close(fig)
    return path


def one_line(text):
    """A name or title as a chart shows it: on one line (a line break in a name drawn as a space)."""
    return " ".join(str(text).splitlines()) if text is not None else ""


def scatter(pred, label, label_higher_better, pred_higher_better, path, title):
    """Prediction (signed so that agreement rises) against label, with the fitted
    5-parameter logistic curve."""
    plt = _pyplot()
    x = agreement_sign(label_higher_better, pred_higher_better) * np.asarray(pred, float)
    y = np.asarray(label, float)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.scatter(x, y, s=4, alpha=0.4, lw=0)
    curve = fit_logistic(x, y)
    if curve is not None:
        xs = np.linspace(x.min(), x.max(), 200)
        ax.plot(xs, curve(xs), "r-", lw=1.5, label="5-parameter logistic")
        ax.legend(loc="best", fontsize=8)
    negated = agreement_sign(label_higher_better, pred_higher_better) < 0
    ax.set_xlabel(("−" if negated else "") + "prediction")
    ax.set_ylabel("label")
    ax.set_title(one_line(title), fontsize=9, **LITERAL)
    fig.tight_layout()
    return _save(fig, path, plt)


def srcc_per_block(rows, path, title):
    """SRCC against the block number (rows: [{'block', 'srcc'}])."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot([r["block"] for r in rows], [r["srcc"] for r in rows], "o-", lw=1.5)
    ax.set_xlabel("block")
    ax.set_ylabel("SRCC")
    ax.set_title(one_line(title), fontsize=9, **LITERAL)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, plt)


def method_bars(rows, path, title, marks=None):
    """Per-method means with their 95 % intervals for one distance.

    Args:
        rows: [{'set', 'distance', 'mean', 'ci95'}], in the order to draw.
        path, title: where to write (a path, or a binary file object: PNG), and the title.
        marks: None, or one label per row drawn above its bar (significance marks).

    Returns:
        path.
    """
    plt = _pyplot()
    names = [one_line(r["set"]) for r in rows]
    means = np.array([r["mean"] for r in rows], float)
    err = np.abs(np.array([r["ci95"] for r in rows], float).T - means)
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(rows) + 1.5), 3.6), dpi=120)
    bars = ax.bar(range(len(rows)), np.nan_to_num(means), yerr=np.nan_to_num(err), capsize=4, color="#4c72b0")
    for bar, mark, top in zip(bars, marks or [], np.nan_to_num(means + err[1])):
        ax.annotate(mark, (bar.get_x() + bar.get_width() / 2, top), ha="center", va="bottom", fontsize=9,
                    xytext=(0, 2), textcoords="offset points", **LITERAL)
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8, **LITERAL)
    ax.set_ylabel(one_line(f"mean {rows[0]['distance']} (lower = closer)"), **LITERAL)
    ax.set_title(one_line(title), fontsize=9, **LITERAL)
    ax.margins(y=0.12)
    fig.tight_layout()
    return _save(fig, path, plt)


def sweep(summary, path):
    """SRCC against magnitude, one panel per kind, one line per distance; the clean run is
    magnitude 0. summary: rows with distance, robustness ('none' for clean), pct, srcc."""
    plt = _pyplot()
    kinds = [k for k in SWEEP_TITLES if any(r["robustness"] == k for r in summary)]
    distances = list(dict.fromkeys(r["distance"] for r in summary))
    clean = {r["distance"]: r["srcc"] for r in summary if r["robustness"] == "none"}
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.4), dpi=120, squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds, strict=False):
        for d in distances:
            pts = sorted((r["pct"], r["srcc"]) for r in summary if r["robustness"] == kind and r["distance"] == d)
            pts = [(0, clean[d])] + pts if d in clean else pts
            ax.plot([p for p, _ in pts], [s for _, s in pts], "o-", ms=3, label=d)
        ax.set_title(SWEEP_TITLES[kind], fontsize=9)
        ax.set_xlabel("magnitude")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("SRCC")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path, plt)


def heatmap(rgb, values, path, title, colorbar_label):
    """A map [H, W] drawn over an image (H×W×3 in [0, 1]) with a colour bar."""
    plt = _pyplot()
    h, w = values.shape
    fig, ax = plt.subplots(figsize=(6 * w / max(h, w) + 1.2, 6 * h / max(h, w)), dpi=100)
    ax.imshow(rgb)
    im = ax.imshow(values, cmap="inferno", alpha=0.6)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(one_line(colorbar_label), **LITERAL)
    ax.set_title(one_line(title), **LITERAL)
    ax.axis("off")
    return _save(fig, path, plt, bbox_inches="tight")


def check_folder(folder):
    """Create an output folder if needed; UserError when it cannot be written (checked before
    any work, so an unwritable folder fails at once). The probe is a new file of a random name
    (created exclusively), so a symlink or file already in the folder is never opened."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".zsiqa_write_test.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to {folder}: {e.strerror or e}") from None


def write_maps(maps, dis_image, folder, model, scores):
    """Write `<distance>.npy` (the raw map) and `<distance>.png` (a heatmap over the
    distorted image, with a colour bar) per distance.

    Args:
        maps: {distance: numpy [H, W]} (`Scorer.maps`).
        dis_image: the distorted image, float tensor [3, H, W] in [0, 1].
        folder: where to write (created if missing).
        model: shown in the titles.
        scores: {distance: the pair's score}, shown in the titles (a map's own mean differs from
            it where windows overlap, since overlaps are averaged).

    Returns:
        the list of paths written.
    """
    check_folder(folder)
    rgb, written = dis_image.permute(1, 2, 0).clamp(0, 1).numpy(), []
    for d, m in maps.items():
        npy, png = os.path.join(folder, f"{d}.npy"), os.path.join(folder, f"{d}.png")
        buffer = io.BytesIO()
        np.save(buffer, m)
        write_atomic(npy, buffer.getvalue())
        heatmap(rgb, m, png, f"{model} {d}: score {scores[d]:.4g}", f"{d} (higher = more different)")
        written += [npy, png]
    return written


# ---------------------------------------------------------------- pictures for a page (data: URIs)

def data_uri(data, kind):
    """Bytes as a data: URI (the page loads nothing from anywhere)."""
    return f"data:{kind};base64," + base64.b64encode(data).decode("ascii")


def encoded(image, fmt):
    """A PIL image as a data: URI of its JPEG or PNG encoding."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    return data_uri(buffer.getvalue(), f"image/{fmt.lower()}")


def thumbnail(rgb, side=160):
    """An H×W×3 uint8 picture as a JPEG data URI at most `side` px wide or high."""
    im = Image.fromarray(rgb)
    im.thumbnail((side, side), Image.BILINEAR)
    return encoded(im, "JPEG")


def heat(values, top, side=160):
    """A difference map as a PNG data URI, coloured (inferno) on the scale 0…top (its row's, so
    that the maps of one image compare; `colour_bar` draws the scale)."""
    import matplotlib
    rgba = matplotlib.colormaps["inferno"](np.clip(np.asarray(values, float) / (top or 1.0), 0, 1))
    im = Image.fromarray((rgba[..., :3] * 255).astype(np.uint8))
    im.thumbnail((side, side), Image.NEAREST)
    return encoded(im, "PNG")


def colour_bar(height=160, width=14):
    """The maps' colour scale (inferno, the top of the bar its maximum) as a PNG data URI; the page
    labels its ends with each row's 0 and maximum."""
    import matplotlib
    ramp = np.linspace(1, 0, height)[:, None].repeat(width, 1)
    return encoded(Image.fromarray((matplotlib.colormaps["inferno"](ramp)[..., :3] * 255).astype(np.uint8)), "PNG")
