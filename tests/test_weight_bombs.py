"""A weights file cannot make its reader take more memory than it declares: a 1 MB archive whose
tensor record inflates to 1 GiB of zeros (DEFLATE) is refused, or read at its declared size, at
about the peak memory of reading a correct file. Each reading runs in a process of its own,
which reports its peak RSS (a memory bound, not a timing)."""
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib

import pytest
import torch

from helpers import ROOT

BOMB = 1 << 30  # what the record inflates to
SLACK_MB = 100  # a bomb's reading may peak this far above a correct file's (the record inflates to 1024 MB)

READ = """import resource, sys
from zsiqa import weights
from zsiqa.errors import UserError
try:
    sd = weights.read_state_dict(sys.argv[1])
    out = "read " + " ".join(f"{k}={tuple(v.shape)}:{float(v.abs().sum()):g}" for k, v in sd.items())
except UserError as e:
    out = "refused " + str(e)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(out)
"""


def peak_and_outcome(path):
    """(peak RSS in MB, 'read …' or 'refused …') of read_state_dict(path) in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", READ, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    peak, outcome = proc.stdout.strip().split("\n", 1)
    return float(peak), outcome


def inflate_record(src, dst, suffix, size):
    """Copy the zip `src` to `dst` with its record `*suffix` replaced by `size` zero bytes, DEFLATEd
    (an honest header: it declares `size`)."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            if not info.filename.endswith(suffix):
                b.writestr(info, a.read(info.filename))
                continue
            target = zipfile.ZipInfo(info.filename)
            target.compress_type, target.file_size = zipfile.ZIP_DEFLATED, size
            with b.open(target, "w") as f:
                block = bytes(16 << 20)
                for start in range(0, size, len(block)):
                    f.write(block[:size - start])
    return dst


def understate(src, dst, suffix, size, crc=None):
    """A copy of the zip `src` whose record `*suffix` declares `size` bytes (and `crc` when given)
    in its local and central headers, whatever its data inflates to (a lying header)."""
    data = bytearray(open(src, "rb").read())
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    local = info.header_offset
    central = data.index(b"PK\x01\x02")
    while data[central + 46:central + 46 + struct.unpack_from("<H", data, central + 28)[0]] != info.filename.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", data, local + 22, size)
    struct.pack_into("<I", data, central + 24, size)
    if crc is not None:
        struct.pack_into("<I", data, local + 14, crc)
        struct.pack_into("<I", data, central + 16, crc)
    shutil.copyfile(src, dst)
    open(dst, "wb").write(data)
    return dst


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """{name: path}: a TorchScript archive (traced nn.Linear(2, 2)) and a torch.save state dict
    as written, and each with its first tensor record inflating to 1 GiB, declared or not."""
    folder = tmp_path_factory.mktemp("bombs")
    jit, pickled = folder / "linear.pt", folder / "sd.pt"
    with pytest.warns(FutureWarning):  # torch.jit.trace is deprecated; the archives it writes are still OpenAI's format
        torch.jit.trace(torch.nn.Linear(2, 2), torch.ones(1, 2)).save(str(jit))
    torch.save({"w": torch.ones(4)}, pickled)
    out = {"jit": jit, "pickled": pickled}
    for name, src in (("jit", jit), ("pickled", pickled)):
        out[f"{name}_honest"] = inflate_record(src, folder / f"{name}_honest.pt", "/data/0", BOMB)
        out[f"{name}_lying"] = understate(out[f"{name}_honest"], folder / f"{name}_lying.pt", "/data/0", 16)
        out[f"{name}_lying_crc"] = understate(out[f"{name}_honest"], folder / f"{name}_lying_crc.pt", "/data/0", 16,
                                              zlib.crc32(bytes(16)))
    return out


@pytest.fixture(scope="module")
def normal_peak(archives):
    """{kind: peak RSS in MB of reading the correct archive}, measured once."""
    out = {}
    for kind in ("jit", "pickled"):
        out[kind], outcome = peak_and_outcome(archives[kind])
        assert outcome.startswith("read "), outcome
    return out


@pytest.mark.parametrize("kind", ["jit", "pickled"])
def test_a_record_that_declares_more_than_its_tensor_is_refused_unread(archives, normal_peak, kind):
    """The honest bomb: data/0 declares 1 GiB where its tensor takes 16 bytes. Refused in one line
    naming the record, at a correct file's peak memory (it was read whole: 3.9 GB for the
    TorchScript reader, which then took it; torch.load allocated the declared GiB)."""
    normal = normal_peak[kind]
    peak, outcome = peak_and_outcome(archives[f"{kind}_honest"])
    assert outcome.startswith("refused ") and "declares 1,073,741,824 bytes where its tensor takes 16" in outcome
    assert len(outcome.splitlines()) == 1
    assert peak - normal < SLACK_MB, (normal, peak)


@pytest.mark.parametrize("kind", ["jit", "pickled"])
def test_a_record_that_inflates_past_its_header_costs_no_more(archives, normal_peak, kind):
    """The lying header: data/0 declares 16 bytes (its tensor's) and inflates to 1 GiB. It is
    read in bounded pieces up to what it declares (the TorchScript reader inflated it whole):
    refused when its checksum is the whole stream's, else read as the 16 bytes it declares."""
    normal = normal_peak[kind]
    peak, outcome = peak_and_outcome(archives[f"{kind}_lying"])
    assert peak - normal < SLACK_MB, (normal, peak)
    if kind == "jit":  # torch.load's reader does not check the checksum
        assert outcome.startswith("refused ") and "corrupt or truncated?" in outcome
    peak, outcome = peak_and_outcome(archives[f"{kind}_lying_crc"])
    assert peak - normal < SLACK_MB, (normal, peak)
    assert outcome.startswith("read weight=(2, 2):0 bias=(2,):") if kind == "jit" else outcome == "read w=(4,):0", \
        outcome
