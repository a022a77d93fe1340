"""Weights: finding, downloading, verifying and reading checkpoint files; the entry point for
every name about weights files (the key checks of zsiqa/keymaps.py and the TorchScript reader
of zsiqa/torchscript.py are importable from here too).

Finding: `resolve_weights` looks in $ZSIQA_WEIGHTS_DIR, then in the upstream libraries' caches,
then downloads. Verifying: OpenAI's files found under their official names must have the
published sha256 (`check_published`); `identity` names any file by its sha256. Reading:
`read_state_dict` takes safetensors, pickled state dicts (tensors only) and TorchScript archives,
whose tensors are extracted without running any of the archive's code (`read_torchscript`).
"""
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import logging
import os
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass
from typing import Callable, Optional

import safetensors.torch
import torch

from zsiqa.errors import UserError, check_readable
from zsiqa.keymaps import HF_VIT_RENAMES as HF_VIT_RENAMES
from zsiqa.keymaps import check_keys as check_keys
from zsiqa.keymaps import hf_vit_to_timm as hf_vit_to_timm
from zsiqa.keymaps import load_strict as load_strict
from zsiqa.keymaps import visual_only as visual_only
from zsiqa.torchscript import MAX_META_BYTES as MAX_META_BYTES
from zsiqa.torchscript import RECORD_PIECE as RECORD_PIECE
from zsiqa.torchscript import ScriptObject as ScriptObject
from zsiqa.torchscript import check_storage_records, read_torchscript
from zsiqa.torchscript import read_record as read_record

# ---------------------------------------------------------------- where weights come from


@dataclass(frozen=True)
class Weights:
    """Where a backbone's weights come from. `file` is the path looked for under
    $ZSIQA_WEIGHTS_DIR (the official file name; hub files keep their repository folders);
    `caches` are the places the upstream libraries keep it; `url` is the official download
    ('clip:NAME' for OpenAI's list, 'hf:REPO/FILE' for the Hugging Face hub)."""
    file: str
    url: Optional[str]
    caches: Callable[[], list]
    source: str                      # one line for humans: where to get the file
    sha256_prefix: Optional[str] = None

    def download(self, target):
        """Fetch the file; returns its path (the hub keeps its own cache)."""
        if self.url.startswith("hf:"):
            from huggingface_hub import hf_hub_download
            repo, _, name = self.url[3:].rpartition("/")
            with _quiet("huggingface_hub"):  # its retries log a pair of lines each; a failure is ours to say
                return hf_hub_download(repo, name)
        url, sha = self.download_url()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        torch.hub.download_url_to_file(url, target, hash_prefix=sha, progress=True)
        return target

    def download_url(self):
        """(url, sha256 prefix); OpenAI's URLs carry the file's sha256 as their folder name."""
        if self.url and self.url.startswith("clip:"):
            url = OPENAI_URLS[self.url[5:]]
            return url, url.split("/")[-2][:10]
        return self.url, self.sha256_prefix

    def published_sha256(self):
        """The full published sha256 of an OpenAI file (its URL's folder name), else None."""
        if not (self.url and self.url.startswith("clip:")):
            return None
        return OPENAI_URLS[self.url[5:]].split("/")[-2].lower()


@contextlib.contextmanager
def _quiet(logger):
    """Only errors from `logger` (and its children) inside the block."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


# OpenAI's download addresses, as the clip package lists them (each folder name is the file's sha256)
OPENAI_URLS = {
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/"
                "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "RN50": "https://openaipublic.azureedge.net/clip/models/"
            "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
}


@functools.lru_cache(maxsize=1)
def clip_model():
    """The `clip` package's model code (clip/model.py: VisionTransformer, ModifiedResNet, …),
    from either distribution that installs that folder (clip-anytorch; openai-clip, which pyiqa
    installs), read without running the package's __init__: that one imports pkg_resources, which
    setuptools 81 and later no longer have. An already imported clip.model is used as it is.

    Returns:
        The module (named clip.model; loaded once per process).
    """
    if "clip.model" in sys.modules:
        return sys.modules["clip.model"]
    package = importlib.util.find_spec("clip")  # locates the folder; runs none of its code
    folders = list(package.submodule_search_locations or []) if package else []
    path = os.path.join(folders[0], "model.py") if folders else ""
    if not os.path.isfile(path):
        raise UserError("the CLIP backbones need the `clip` package's model code (clip/model.py), which is not "
                        "installed: pip install clip-anytorch")
    spec = importlib.util.spec_from_file_location("clip.model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not put in sys.modules: a later `import clip` gets its own, whole package
    return module


# A cache is a callable → [candidate paths], made with functools.partial of module functions
# (not closures) so that a backbone's entry, and a module holding it, can be pickled.

def clip_cache(file):
    """Where the `clip` package keeps OpenAI's files."""
    return functools.partial(_clip_paths, file)


def _clip_paths(file):
    return [os.path.join(os.path.expanduser("~/.cache/clip"), file)]


def torch_hub_cache(file):
    """Where torch.hub keeps checkpoints downloaded by URL."""
    return functools.partial(_torch_hub_paths, file)


def _torch_hub_paths(file):
    return [os.path.join(torch.hub.get_dir(), "checkpoints", file)]


def hf_cache(repo, file):
    """The Hugging Face hub cache (used by timm and transformers), read offline."""
    return functools.partial(_hf_paths, repo, file)


def _hf_paths(repo, file):
    try:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(repo, file)
    except Exception:  # hub library missing or cache unreadable: nothing cached there
        hit = None
    return [hit if isinstance(hit, str) else f"the Hugging Face hub cache ({repo}/{file})"]


def join_caches(*caches):
    """Several cache lists, looked at in order."""
    return functools.partial(_joined_paths, caches)


def _joined_paths(caches):
    return [p for c in caches for p in c()]


def openai_weights(file, name):
    """One of OpenAI's CLIP files, known to the `clip` package as `name`."""
    return Weights(file, f"clip:{name}", clip_cache(file),
                   f"OpenAI CLIP (the clip package downloads it as '{name}')")


def hub_weights(repo, file, source=None):
    """Weights published on the Hugging Face hub; $ZSIQA_WEIGHTS_DIR/REPO/FILE offline."""
    return Weights(f"{repo}/{file}", f"hf:{repo}/{file}", hf_cache(repo, file),
                   source or f"https://huggingface.co/{repo} ({file})")


def weight_candidates(w):
    """Every place looked at, in order: $ZSIQA_WEIGHTS_DIR, then the library caches."""
    places = []
    if os.environ.get("ZSIQA_WEIGHTS_DIR"):
        places.append(os.path.join(os.environ["ZSIQA_WEIGHTS_DIR"], w.file))
    return places + w.caches()


def offline():
    """True when ZSIQA_OFFLINE or HF_HUB_OFFLINE is set (to anything but '' or '0')."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("ZSIQA_OFFLINE", "HF_HUB_OFFLINE"))


def resolve_weights(backbone, explicit=None):
    """The weights file to use: the explicit path, else the first existing candidate, else
    a download into the first library cache. UserError naming every place looked at. A file
    found or downloaded under an official OpenAI name must have the published sha256."""
    w = backbone.weights
    if explicit is not None:
        explicit = os.fsdecode(explicit)  # str, bytes or a PathLike
        if not explicit.strip():
            raise UserError("the weights path is empty (an unset variable?); leave it out to use the usual lookup")
        return check_readable(explicit, "weights file")
    places = weight_candidates(w)
    for p in places:
        if os.path.isfile(p):
            check_published(backbone, p)
            return p
    why = "no download source" if not w.url else "offline (ZSIQA_OFFLINE/HF_HUB_OFFLINE set)" if offline() else None
    if why is None:
        try:
            path = w.download(w.caches()[0])
        except Exception as e:  # any network or disk failure ends in the one-line message
            why = f"download failed ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
        else:
            check_published(backbone, path)
            return path
    raise UserError(f"weights for {backbone.name} not found: need {w.file} from {w.source}; "
                    f"looked in {', '.join(places) or '(no places)'}; {why}. "
                    f"pass weights=PATH (--weights PATH on the command line) or put the file in $ZSIQA_WEIGHTS_DIR")


# ---------------------------------------------------------------- verifying

_BLOCK = 4 << 20  # hashing reads 4 MiB at a time


@functools.lru_cache(maxsize=32)
def _sha256(path, size, mtime_ns):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def identity(path):
    """'random', or 'sha256:<hex>' of the weights file: what the numbers were made with.
    Remembered per (file, size, modification time), so a file is hashed once per process."""
    if path == "random":
        return "random"
    real = os.path.realpath(path)
    st = os.stat(real)
    return "sha256:" + _sha256(real, st.st_size, st.st_mtime_ns)


def check_published(backbone, path):
    """Refuse a file found under an official OpenAI name whose sha256 is not the published one."""
    want = backbone.weights.published_sha256()
    if want is None:
        return
    got = identity(path)[len("sha256:"):]
    if got != want:
        raise UserError(f"weights file {path} is not the published {backbone.weights.file} "
                        f"(sha256 {got[:16]}..., published {want[:16]}...): refusing it under the official name; "
                        f"pass weights=PATH (--weights PATH) to read a non-official file's tensors (its code is never "
                        "run)")


# ---------------------------------------------------------------- reading


def is_torchscript(path):
    """A zip archive with a code/ folder: what torch.jit.save writes."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def is_safetensors(path):
    """A safetensors file, whatever its name: an 8-byte little-endian header length, then
    a JSON header that starts with '{' and fits in the file."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _load_any(path):
    """The raw object of a checkpoint file (see `read_state_dict`); UserError when unreadable."""
    try:
        if is_safetensors(path):
            return safetensors.torch.load_file(path)
        if is_torchscript(path):  # OpenAI's CLIP releases are TorchScript archives
            return read_torchscript(path)
        if zipfile.is_zipfile(path):  # torch.load reads each record whole, at the size its header declares
            check_storage_records(path)
        with warnings.catch_warnings():  # torch's note on old pickle protocols: noise before our one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as e:  # any unreadable file ends in one line
        why = next((line for line in str(e).splitlines() if "GLOBAL" in line.upper()), None)
        if isinstance(e, pickle.UnpicklingError) and why:  # weights_only refused a global: nothing ran
            raise UserError(f"refusing weights file {path}: it holds Python objects other than tensors "
                            f"({why.strip()[:120]}); none of them was run") from None
        raise UserError(f"cannot read weights file {path}: not a TorchScript archive, PyTorch "
                        f"state dict or safetensors file (corrupt or truncated?)") from None


def read_state_dict(path):
    """Read a checkpoint in any official format: TorchScript archive (OpenAI CLIP; read by
    `read_torchscript`, none of its code is run), pickled state dict (.pt/.pth/.bin; tensors
    only, nothing else is unpickled), safetensors (recognised by content, whatever the
    name). An OpenCLIP training checkpoint's `state_dict` (keys prefixed `module.`) is
    unwrapped. Names must be strings and tensors real numbers; NaN/inf are refused."""
    path = os.fspath(path)
    sd = _load_any(path)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) and isinstance(k, str) for k, v in sd.items()):
        raise UserError(f"weights file {path} holds no state dict of named tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    complex_key = next((k for k, v in sd.items() if v.is_complex()), None)
    if complex_key is not None:  # loading would silently drop the imaginary part
        raise UserError(f"weights file {path} holds complex tensors (first {complex_key}): not weights of a backbone")
    bad = next((k for k, v in sd.items() if v.is_floating_point() and not all_finite(v)), None)
    if bad is not None:  # NaN/inf weights would make every score NaN
        raise UserError(f"weights file {path} holds NaN or infinite values (first in {bad})")
    return sd


def all_finite(t):
    """Whether a float tensor holds no NaN or infinity. A NaN or infinity makes the sum non-finite,
    so a finite sum proves it (a fast reduction: a value-by-value test allocated a copy of every
    tensor and took seconds for a backbone); a non-finite sum (maybe finite values overflowing)
    is checked value by value. Dtypes without a sum (the float8 ones) are summed as float32."""
    try:
        total = t.sum()
    except (NotImplementedError, RuntimeError):  # float8: no reduction kernels
        t = t.float()
        total = t.sum()
    return bool(torch.isfinite(total)) or bool(torch.isfinite(t).all())
