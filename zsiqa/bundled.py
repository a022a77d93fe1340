"""The files shipped inside the package (zsiqa/data/), found wherever zsiqa is installed: the
example images (a synthetic reference and three distortions) and the six published per-image
results files of the paper's authors, which `zsiqa corr --published NAME` reads.

    from zsiqa import example
    Scorer("dinov1", "wsd")(example("dis_blur.png"), example("ref.png"))
"""
import os

from zsiqa.errors import UserError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
EXAMPLES = os.path.join(DATA, "examples")
PUBLISHED = os.path.join(DATA, "published")


def _listing(folder, ext):
    return sorted(f[: -len(ext)] for f in os.listdir(folder) if f.endswith(ext))


def example_names():
    """The bundled example images' file names (ref.png, dis_blur.png, …).

    Returns:
        A sorted list of file names.
    """
    return [f"{n}.png" for n in _listing(EXAMPLES, ".png")]


def example(name):
    """The path of a bundled example image.

    Args:
        name: its file name: ref.png, dis_blur.png, dis_jpeg.png or dis_noise.png (".png" may be left out).
    Returns:
        The path (str), readable by every zsiqa call that takes an image.
    """
    file = name if name.endswith(".png") else f"{name}.png"
    if file not in example_names():
        raise UserError(f"no bundled example image {name!r}; there are {', '.join(example_names())}")
    return os.path.join(EXAMPLES, file)


def published_names():
    """The names of the bundled published per-image files (pipal_dinov1_wsd, …).

    Returns:
        A sorted list of names (file names without .csv).
    """
    return _listing(PUBLISHED, ".csv")


def published(name):
    """The path of a bundled published per-image file.

    Args:
        name: its name, as published_names() gives it (".csv" may be added).
    Returns:
        The path (str) of its `dis,ref,mos,pred` file.
    """
    stem = name[:-4] if name.endswith(".csv") else name
    if stem not in published_names():
        raise UserError(f"no published file {name!r}; there are {', '.join(published_names())} "
                        "(zsiqa corr --published list)")
    return os.path.join(PUBLISHED, f"{stem}.csv")


def is_published(path):
    """True when `path` is one of the bundled published files (by file identity, not by name).

    Args:
        path: any path.
    Returns:
        bool.
    """
    folder = os.path.dirname(os.path.abspath(path))
    return (os.path.isfile(path) and os.path.isdir(PUBLISHED) and os.path.samefile(folder, PUBLISHED)
            and os.path.basename(path)[:-4] in published_names())
