"""TorchScript archives read without running them: `read_torchscript` gives an archive's
parameters and buffers, unpickling data.pkl with only tensor-rebuilding globals allowed and
naming tensors from the text of its code/ records; `read_record` reads a zip record with memory
bounded by what the file declares; `check_storage_records` checks a torch.save archive's record
sizes before torch.load reads them whole.
"""
import collections
import io
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass

import torch

from zsiqa.errors import UserError

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
