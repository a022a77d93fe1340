"""Weights: finding, verifying and reading checkpoint files, and mapping their keys.

Finding: `resolve_weights` looks in $ZSIQA_WEIGHTS_DIR, then in the upstream libraries' caches,
then downloads. Verifying: OpenAI's files found under their official names must have the
published sha256 (`check_published`); `identity` names any file by its sha256. Reading:
`read_state_dict` takes safetensors, pickled state dicts (tensors only) and TorchScript archives,
whose tensors are extracted without running any of the archive's code (`read_torchscript`).
Key mapping: `check_keys`/`load_strict` give one-line misfit messages, `visual_only` takes a
CLIP checkpoint's image tower, `hf_vit_to_timm` renames Hugging Face ViT keys to timm's.
"""
import collections
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import io
import logging
import os
import pickle
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from typing import Callable, Optional

import safetensors.torch
import torch

from zsiqa.errors import UserError, check_readable

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


# ------------------------------------------------ TorchScript archives, without running them

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}

# torch.jit._pickle's list helpers only return their argument; restore_type_tag returns the value
_LIST_HELPERS = ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist")


@dataclass(frozen=True)
class _StorageType:
    """Stands in for `torch.FloatStorage` & co. in a persistent id: only its dtype is used."""
    dtype: torch.dtype


class ScriptObject:
    """Stands in for a TorchScript class of the archive (`__torch__.*`): it keeps the pickled
    state and runs nothing; the archive's own __setstate__ is never called."""
    qualified_name = "__torch__"

    def __init__(self, *args, **kwargs):  # a REDUCE on the class: arguments are ignored
        pass

    def __setstate__(self, state):
        self.__dict__["state"] = state


def _as_list(data):
    return list(data)


def _type_tag(value, type_str):
    return value


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 for a flat tensor standing in for the storage."""
    ints = (isinstance(offset, int) and all(isinstance(x, int) for x in (*size, *stride))
            and len(size) == len(stride))
    if not torch.is_tensor(storage) or not ints:
        raise ValueError("malformed tensor record")
    return storage.as_strided(tuple(size), tuple(stride), offset)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles an archive's data.pkl: TorchScript classes become ScriptObjects, tensors are
    rebuilt from the archive's data/ records; any other global is refused."""

    def __init__(self, archive, prefix, path):
        self.archive, self.prefix, self.path = archive, prefix, path
        self.classes, self.storages = {}, {}
        self.swap = _byteorder(archive, prefix, path) != sys.byteorder
        super().__init__(io.BytesIO(read_record(archive, f"{prefix}/data.pkl", path)))

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                self.classes[qualified] = type(name, (ScriptObject,), {"qualified_name": qualified})
            return self.classes[qualified]
        allowed = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                   ("collections", "OrderedDict"): collections.OrderedDict,
                   ("torch.jit._pickle", "restore_type_tag"): _type_tag}
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "torch.jit._pickle" and name in _LIST_HELPERS:
            return _as_list
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UserError(f"refusing weights file {self.path}: its data.pkl asks for {module}.{name}, "
                        f"which tensors never need (nothing from the file was run)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise ValueError("malformed storage record")
        _, kind, key, _location, numel = pid
        if key not in self.storages:
            self.storages[key] = self._storage(kind.dtype, key, numel)
        return self.storages[key]

    def _storage(self, dtype, key, numel):
        """The flat tensor [numel] of `dtype` held by the record data/<key> (little-endian), read
        by `read_record`: its declared size must be the tensor's before any of it is read."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        data = read_record(self.archive, f"{self.prefix}/data/{key}", self.path, numel * itemsize)
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        raw = torch.frombuffer(data, dtype=torch.uint8, count=numel * itemsize)
        if self.swap and itemsize > 1:
            raw = raw.view(-1, itemsize).flip(-1).reshape(-1)
        return raw.view(dtype)


def _byteorder(archive, prefix, path):
    try:
        return read_record(archive, f"{prefix}/byteorder", path).decode().strip() or "little"
    except KeyError:  # archives before the record existed were written little-endian
        return "little"


_MODULE_CLASS = re.compile(r'^class (\w+)\(Module\):\n +__parameters__ = \[(.*?)\]\n +__buffers__ = \[(.*?)\]', re.M)


def _module_layouts(archive, prefix, path):
    """Qualified class name → (parameter names, buffer names), read as text from the class
    headers of the archive's code/ records (which nothing here runs)."""
    code = f"{prefix}/code/"
    names = [n for n in archive.namelist() if n.startswith(code) and n.endswith(".py")]
    if sum(archive.getinfo(n).file_size for n in names) > MAX_META_BYTES:
        raise UserError(f"refusing weights file {path}: its code/ records declare over {MAX_META_BYTES >> 20} MiB of "
                        "text, far more than torch writes for a backbone")
    layouts = {}
    for name in names:
        module = name[len(code):-len(".py")].replace("/", ".")
        text = read_record(archive, name, path).decode("utf-8", errors="replace")
        for cls, params, buffers in _MODULE_CLASS.findall(text):
            layouts[f"{module}.{cls}"] = (re.findall(r'"([^"]*)"', params), re.findall(r'"([^"]*)"', buffers))
    return layouts


def _collect(obj, key, layouts, out, path):
    """Parameters and buffers of a module stub and its submodules, keyed as state_dict() keys
    them: own parameters, own buffers, then each submodule in attribute order."""
    state = obj.__dict__.get("state")
    if not isinstance(state, dict):
        raise UserError(f"refusing weights file {path}: module {obj.qualified_name} restores its state with its "
                        f"own code (__setstate__), which is never run; its tensors cannot be named")
    if obj.qualified_name in layouts:
        params, buffers = layouts[obj.qualified_name]
        names = [n for n in params + buffers if torch.is_tensor(state.get(n))]
    else:  # no class header: every tensor attribute counts
        names = [n for n, v in state.items() if torch.is_tensor(v)]
    out.update((key + n, state[n]) for n in names)
    for n, v in state.items():
        if isinstance(v, ScriptObject) and (not layouts or v.qualified_name in layouts):
            _collect(v, f"{key}{n}.", layouts, out, path)


def read_torchscript(path):
    """The parameters and buffers of a TorchScript archive, keyed as
    `torch.jit.load(path).state_dict()` keys them, read without running any of its code:
    data.pkl is unpickled with only tensor-rebuilding globals allowed (UserError otherwise)."""
    with zipfile.ZipFile(path) as archive:
        check_record_names(archive, path)
        roots = [n[:-len("/data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not roots:
            raise ValueError("no data.pkl record")
        root = _SafeUnpickler(archive, roots[0], path).load()
        if not isinstance(root, ScriptObject):
            raise ValueError("data.pkl holds no module")
        out = {}
        _collect(root, "", _module_layouts(archive, roots[0], path), out, path)
    return out


# ------------------------------------------------ zip records, read with bounded memory

RECORD_PIECE = 1 << 20  # a record is decompressed 1 MiB at a time
MAX_META_BYTES = 64 << 20  # data.pkl, code/, byteorder: torch writes kilobytes of them for a backbone


def read_record(archive, name, path, size=None):
    """The bytes of record `name` of the zip `archive` (the weights file `path`), with memory
    bounded by what the file declares: the header's uncompressed size must be `size` (a tensor's
    bytes; None: a record that holds no tensor, at most MAX_META_BYTES), checked before anything
    is read; the record is then decompressed RECORD_PIECE bytes at a time into a buffer of that
    size, stopping at the first byte past it. A few-MB file whose record inflates to gigabytes
    is refused at the cost of a correct one. KeyError when the record is absent; UserError when
    it is too large; ValueError when it is shorter than declared (a truncated file)."""
    info = archive.getinfo(name)
    declared = info.file_size
    if size is None and declared > MAX_META_BYTES:
        raise UserError(f"refusing weights file {path}: its record {name} declares {declared:,} bytes, far more than "
                        f"torch writes there (at most {MAX_META_BYTES >> 20} MiB are read)")
    size = declared if size is None else size
    if declared > size:
        raise UserError(f"refusing weights file {path}: its record {name} declares {declared:,} bytes where its "
                        f"tensor takes {size:,} (a decompression bomb?); nothing from it was read")
    if declared < size:
        raise ValueError(f"record {name} is truncated")
    out, got = bytearray(size), 0
    with archive.open(info) as f:
        while got < size and (piece := f.read(min(RECORD_PIECE, size - got))):
            out[got:got + len(piece)] = piece
            got += len(piece)
        if got < size:
            raise ValueError(f"record {name} is truncated")
        if f.read(1):  # a stream that inflates past its header (zipfile stops there too)
            raise UserError(f"refusing weights file {path}: its record {name} inflates to more than the {size:,} "
                            "bytes its header declares")
    return out


class _Inert:
    """Stands in for every object of a pickle read only for its storage records' sizes: it is
    built from anything and does nothing, so no global of the file is looked up or run."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def add(self, item):
        pass


_SIZED_STORAGES = {**_STORAGE_DTYPES, "UntypedStorage": torch.uint8, "ComplexFloatStorage": torch.complex64,
                   "ComplexDoubleStorage": torch.complex128, "QInt8Storage": torch.qint8, "QUInt8Storage": torch.quint8,
                   "QInt32Storage": torch.qint32, "QUInt4x2Storage": torch.quint4x2, "QUInt2x4Storage": torch.quint2x4}


class _StorageSizes(pickle.Unpickler):
    """Reads a torch.save archive's data.pkl for its storage records only: {key: (dtype, numel)}.
    Every global but a storage type is an _Inert stand-in (nothing is looked up or run)."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.sizes = {}

    def find_class(self, module, name):
        if module in ("torch", "torch.storage") and name in _SIZED_STORAGES:
            return _StorageType(_SIZED_STORAGES[name])
        return _Inert

    def persistent_load(self, pid):
        if (isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int)):
            self.sizes[pid[2]] = (pid[1].dtype, pid[4])
        return _Inert()


def check_record_names(archive, path):
    """UserError when two records of the zip `archive` (the weights file `path`) have one name, or
    names alike but for ASCII case: torch's zip reader looks a record up ignoring case and, among
    records of one name, finds any one, so the record it reads could be another than the one
    checked here (a decompression bomb beside a checked twin)."""
    seen = {}
    for name in archive.namelist():
        key = name.encode("utf-8", "surrogateescape").lower()  # bytes: ASCII letters only, as torch's reader
        if key in seen:
            twin = seen[key]
            alike = "twice" if twin == name else f"and as {twin!r} (alike but for case)"
            raise UserError(f"refusing weights file {path}: it holds the record {name!r} {alike}, which torch.save "
                            "never writes; nothing from it was read")
        seen[key] = name


def check_storage_records(path):
    """UserError unless every storage record of the torch.save zip archive `path` declares the
    size of the tensor its data.pkl says it holds (torch.load reads a record whole, at its
    declared size, before anything could check it); data.pkl is read within MAX_META_BYTES."""
    with zipfile.ZipFile(path) as archive:
        check_record_names(archive, path)
        for pkl in [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]:
            prefix = pkl[:-len("/data.pkl")]
            unpickler = _StorageSizes(read_record(archive, pkl, path))
            unpickler.load()
            for key, (dtype, numel) in unpickler.sizes.items():
                name = f"{prefix}/data/{key}"
                try:
                    declared = archive.getinfo(name).file_size
                except KeyError:  # torch.load refuses a missing record itself
                    continue
                if declared > numel * dtype.itemsize:
                    raise UserError(f"refusing weights file {path}: its record {name} declares {declared:,} bytes "
                                    f"where its tensor takes {numel * dtype.itemsize:,} (a decompression bomb?); "
                                    "nothing from it was read")


# ---------------------------------------------------------------- key checks and mapping


def check_keys(sd, expect, backbone, path):
    """Fail clearly when a file is for another architecture (shape or key mismatch)."""
    for key, shape in expect.items():
        if key not in sd or tuple(sd[key].shape) != tuple(shape):
            got = tuple(sd[key].shape) if key in sd else "missing"
            raise UserError(f"weights file {path} does not fit {backbone.name} ({backbone.arch}): "
                            f"{key} is {got}, expected {tuple(shape)}")


def load_strict(module, sd, backbone, path, assign=False):
    """load_state_dict (assign=True: the tensors become the parameters, for a module built on
    the meta device), with a mismatch summarised in one line (counts and first keys)."""
    misfit = f"weights file {path} does not fit {backbone.name} ({backbone.arch})"
    try:
        result = module.load_state_dict(sd, strict=False, assign=assign)
    except RuntimeError as e:  # shape mismatches
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), "shape mismatch")
        raise UserError(f"{misfit}: {detail[:200]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{misfit}: {len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:2]}), "
                        f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})")


def visual_only(sd, prefix="visual."):
    """The `visual.*` part of a CLIP/OpenCLIP checkpoint, prefix removed (text tower ignored)."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


HF_VIT_RENAMES = (  # Hugging Face ViT/DINOv2 names → timm's (docs/protocol.md)
    ("embeddings.cls_token", "cls_token"), ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."), ("encoder.layer.", "blocks."),
    (".attention.output.dense.", ".attn.proj."), (".layernorm_before.", ".norm1."), (".layernorm_after.", ".norm2."),
    (".intermediate.dense.", ".mlp.fc1."), (".output.dense.", ".mlp.fc2."),
    (".layer_scale1.lambda1", ".ls1.gamma"), (".layer_scale2.lambda1", ".ls2.gamma"), ("layernorm.", "norm."),
)


def hf_vit_to_timm(sd):
    """Hugging Face ViT / DINOv2 / DINO (`facebook/dino-vitb16`) keys onto timm's ViT;
    timm-layout files pass through. query/key/value are concatenated into qkv."""
    if not any(".attention.attention.query." in k for k in sd):
        return sd
    sd = {k[4:] if k.startswith("vit.") else k: v for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        if k.startswith(("classifier.", "pooler.")) or k == "embeddings.mask_token" or ".attention.attention." in k:
            continue
        for old, new in HF_VIT_RENAMES:
            k = k.replace(old, new)
        out[k] = v
    for k in [k for k in sd if ".attention.attention.query." in k]:
        block = k.split(".attention.attention.query.")[0].replace("encoder.layer.", "blocks.")
        kind = k.rsplit(".", 1)[1]
        parts = [sd[k.replace(".query.", f".{n}.")] for n in ("query", "key", "value")]
        out[f"{block}.attn.qkv.{kind}"] = torch.cat(parts, 0)
    return out
