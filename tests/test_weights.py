"""Weight files: TorchScript archives are read without running their code (the tensors equal
torch.jit.load's; load-time code and forbidden globals never run), OpenAI's files found under
their official names must have the published sha256, and `identity` names a file by its hash."""
import hashlib
import os
import pickle
import subprocess
import sys
import zipfile
from typing import Tuple

import numpy as np
import pytest
import torch
from PIL import Image

import run_single_img
from helpers import ROOT, fails_one_line
from zsiqa import models, weights
from zsiqa.errors import UserError

MARKER = "ZSIQA-LOAD-TIME-CODE-RAN"


@pytest.fixture(autouse=True)
def no_jit_load(monkeypatch):
    """Nothing here may hand a file to torch.jit.load (it runs the archive's code)."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")
    monkeypatch.setattr(torch.jit, "load", refuse)


def _jit_state_dict(path):
    """torch.jit.load(path).state_dict() keys and tensors, in a fresh process (this one refuses it)."""
    code = ("import sys, torch; sd = torch.jit.load(sys.argv[1], map_location='cpu').state_dict();"
            "torch.save({k: v.clone() for k, v in sd.items()}, sys.argv[2]); print(list(sd))")
    out = str(path) + ".jit_sd"
    proc = subprocess.run([sys.executable, "-c", code, str(path), out], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return torch.load(out), eval(proc.stdout.strip().splitlines()[-1])


def _same(got, want, keys):
    assert list(got) == keys
    for k in keys:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape and torch.equal(got[k], want[k]), k


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_clip_gives_the_jit_state_dict(checkpoint, tmp_path):
    """OpenAI's release format (a traced CLIP): the same keys in the same order, same tensors."""
    model = weights.clip_model().build_model(dict(torch.load(checkpoint("clip_vitb32"), map_location="cpu"))).float()
    model.eval()
    archive = tmp_path / "ViT-B-32.pt"
    torch.jit.trace_module(model, {"encode_image": torch.rand(1, 3, 224, 224)}).save(str(archive))
    want, keys = _jit_state_dict(archive)
    got = weights.read_state_dict(str(archive))
    _same(got, want, keys)
    assert keys == list(model.state_dict())


class _Attributes(torch.nn.Module):
    """Buffers, a plain tensor attribute (not in state_dict), a list, a half submodule."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2).half()
        self.norm = torch.nn.BatchNorm1d(2)
        self.register_buffer("steps", torch.arange(4))
        self.plain = torch.zeros(2)
        self.sizes = [1, 2]

    def forward(self, x):
        return self.norm(self.lin(x.half()).float()) + self.plain + self.steps.sum()


@pytest.mark.slow
def test_scripted_module_gives_the_jit_state_dict(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.script(_Attributes().eval()).save(str(path))
    want, keys = _jit_state_dict(path)
    assert "plain" not in keys and "norm.num_batches_tracked" in keys
    _same(weights.read_torchscript(str(path)), want, keys)


def test_big_endian_archive_is_swapped(tmp_path):
    """An archive written on a big-endian machine (byteorder record 'big') reads the same values."""
    m = torch.nn.Linear(3, 2)
    little, big = tmp_path / "l.pt", tmp_path / "b.pt"
    torch.jit.script(m).save(str(little))
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name:  # float32 records: reverse each 4-byte word
                data = np.frombuffer(data, dtype="<f4").astype(">f4").tobytes()
            dst.writestr(name, data)
    got = weights.read_torchscript(str(big))
    assert torch.equal(got["weight"], m.weight.detach()) and torch.equal(got["bias"], m.bias.detach())


class _LoadTimeCode(torch.nn.Module):
    """A module whose TorchScript __setstate__ runs when torch.jit.load loads it: it prints MARKER."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        print("ZSIQA-LOAD-TIME-CODE-RAN")
        self.w = state[0]
        self.training = state[1]

    def forward(self, x):
        return x * self.w


@pytest.mark.slow
@pytest.mark.subprocess
def test_load_time_code_never_runs(tmp_path, capfd):
    path = tmp_path / "evil.pt"
    torch.jit.script(_LoadTimeCode()).save(str(path))
    ran = subprocess.run([sys.executable, "-c", f"import torch; torch.jit.load({str(path)!r})"],
                         capture_output=True, text=True)
    assert MARKER in ran.stdout  # what torch.jit.load would do: the archive's code runs
    capfd.readouterr()
    with pytest.raises(UserError) as e:
        weights.read_state_dict(str(path))
    assert len(str(e.value).splitlines()) == 1 and "never run" in str(e.value)
    assert MARKER not in capfd.readouterr().out


class _System:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


def _crafted_zip(path, marker, call=os.system, torchscript=True):
    """A zip laid out like a TorchScript archive whose data.pkl calls `call` on unpickling."""
    arg = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w').close()"
    records = {"x/data.pkl": pickle.dumps({"weight": _System(call, arg)}, protocol=2), "x/version": b"3\n",
               "x/byteorder": b"little"}
    if torchscript:
        records["x/code/__torch__.py"] = b"class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in records.items():
            z.writestr(name, data)
    return str(path)


@pytest.mark.parametrize("call", [os.system, exec])
@pytest.mark.parametrize("torchscript", [True, False])
def test_forbidden_global_is_refused(tmp_path, call, torchscript):
    marker = tmp_path / "ran"
    path = _crafted_zip(tmp_path / "crafted.pt", marker, call, torchscript)
    with pytest.raises(UserError) as e:
        weights.read_state_dict(path)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and path in msg
    if torchscript:  # named: posix.system, builtins.exec
        assert f".{call.__name__}, which tensors never need" in msg, msg
    assert not marker.exists()


def test_stub_classes_are_inert(tmp_path):
    """A `__torch__` name is never looked up: dotted names and REDUCE arguments do nothing."""
    data = (b"\x80\x02c__torch__\nx.__init__.__globals__\nq\x00X\x02\x00\x00\x00hi\x85R.")
    path = tmp_path / "s.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x/data.pkl", data)
        z.writestr("x/code/__torch__.py", b"")
    with pytest.raises(UserError, match="never run"):
        weights.read_torchscript(str(path))


def _official_name_file(directory, marker):
    directory.mkdir(parents=True, exist_ok=True)
    return _crafted_zip(directory / "ViT-B-32.pt", marker)


def test_official_name_needs_the_published_sha256(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("ZSIQA_WEIGHTS_DIR", str(tmp_path / "w"))
    path = _official_name_file(tmp_path / "w", marker)
    b = models.get_backbone("clip_vitb32")
    with pytest.raises(UserError) as e:
        weights.resolve_weights(b)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "not the published ViT-B-32.pt" in msg and "--weights PATH" in msg
    # the clip package's cache is an official place too
    monkeypatch.delenv("ZSIQA_WEIGHTS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cached = _official_name_file(tmp_path / "home" / ".cache" / "clip", marker)
    with pytest.raises(UserError, match="not the published"):
        weights.resolve_weights(b)
    # a file with the published hash is taken; an explicit path is not hash-checked
    digest = hashlib.sha256(open(cached, "rb").read()).hexdigest()
    monkeypatch.setitem(weights.OPENAI_URLS, "ViT-B/32", f"https://example.invalid/clip/models/{digest}/ViT-B-32.pt")
    assert weights.resolve_weights(b) == cached
    assert weights.resolve_weights(b, path) == path
    assert not marker.exists()


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for n in ("a", "b"):
        paths.append(str(tmp_path / f"{n}.png"))
        Image.fromarray(rng.integers(0, 256, (230, 240, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _fails(capsys, argv, match):
    return fails_one_line(capsys, lambda: run_single_img.main(argv), match, warnings=False)


def test_cli_refuses_crafted_weights(tmp_path, monkeypatch, capsys, pair):
    marker = tmp_path / "ran"
    monkeypatch.setenv("ZSIQA_WEIGHTS_DIR", str(tmp_path / "w"))
    path = _official_name_file(tmp_path / "w", marker)
    argv = ["-ref", pair[0], "-dis", pair[1], "-m", "clip_vitb32", "--device", "cpu"]
    _fails(capsys, argv, "not the published ViT-B-32.pt")
    _fails(capsys, argv + ["--weights", path], "refusing weights file")
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_process_refuses_crafted_weights(tmp_path, pair):
    """The real entry point: exit code 2, one line, nothing from the file ran."""
    marker = tmp_path / "ran"
    env = {**os.environ, "ZSIQA_WEIGHTS_DIR": str(tmp_path / "w"), "ZSIQA_OFFLINE": "1"}
    _official_name_file(tmp_path / "w", marker)
    proc = subprocess.run([sys.executable, str(ROOT / "run_single_img.py"), "-ref", pair[0], "-dis", pair[1],
                           "-m", "clip_vitb32", "--device", "cpu"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not the published" in proc.stderr and not marker.exists()


def test_identity(tmp_path):
    assert weights.identity("random") == "random"
    path = tmp_path / "w.bin"
    data = os.urandom((4 << 20) + 17)  # more than one 4 MiB block
    path.write_bytes(data)
    assert weights.identity(str(path)) == "sha256:" + hashlib.sha256(data).hexdigest()
    path.write_bytes(b"other")  # a changed file is hashed again
    assert weights.identity(str(path)) == "sha256:" + hashlib.sha256(b"other").hexdigest()


def test_registry_shares_one_family_for_the_hugging_face_vit():
    assert models.BACKBONES["dinov1"].family is models.BACKBONES["imagenet_vit"].family
    for name, b in models.BACKBONES.items():
        if name.startswith("embed_"):
            base = models.BACKBONES[name[len("embed_"):]]
            assert b.family is base.family and b.weights is base.weights and b.output == "embed"


def test_pickled_state_dicts_still_read_safely(tmp_path):
    sd = {"a": torch.ones(2), "b": torch.arange(3)}
    torch.save(sd, tmp_path / "sd.pt")
    got = weights.read_state_dict(str(tmp_path / "sd.pt"))
    assert list(got) == ["a", "b"] and torch.equal(got["b"], sd["b"])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_state_dicts_are_refused_in_one_line(tmp_path):
    """A pickle with a code-running global (refused as such, never run), complex tensors
    (loading would drop the imaginary part), non-string names: each one clear UserError."""
    marker = tmp_path / "ran"
    cases = {"evil.pth": ({"a": torch.ones(2), "b": _Evil(marker)}, "Python objects other than tensors"),
             "complex.pth": ({"a": torch.ones(2, dtype=torch.complex64)}, "complex tensors"),
             "intkey.pth": ({"a": torch.ones(2), 1: torch.ones(1)}, "named tensors")}
    for name, (obj, match) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(UserError, match=match):
            weights.read_state_dict(str(tmp_path / name))
    assert not marker.exists()


def test_safetensors_read_by_content_and_paths_as_pathlib(tmp_path):
    """A safetensors file under a .pth name is read as safetensors; a pathlib.Path works
    wherever a weights path does."""
    from safetensors.torch import save_file
    sd = {"a": torch.arange(6.0).view(2, 3)}
    save_file(sd, tmp_path / "named.pth")
    got = weights.read_state_dict(tmp_path / "named.pth")
    assert list(got) == ["a"] and torch.equal(got["a"], sd["a"])
    b = models.BACKBONES["dinov1"]
    assert weights.resolve_weights(b, tmp_path / "named.pth") == str(tmp_path / "named.pth")


def test_hub_download_failure_is_one_line(monkeypatch, capfd):
    """huggingface_hub logs two lines per retry to stderr (its own handler); a failed download
    must still end in our one line alone."""
    import huggingface_hub
    from huggingface_hub.utils import logging as hub_logging

    def unreachable(repo, name):
        log = hub_logging.get_logger("huggingface_hub.utils._http")
        for wait in (1, 2):
            log.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD https://x")
            log.warning(f"Retrying in {wait}s [Retry {wait}/5].")
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setattr(weights, "weight_candidates", lambda w: [])
    for var in ("ZSIQA_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    level = hub_logging.get_logger("huggingface_hub").level
    with pytest.raises(UserError, match="download failed"):
        weights.resolve_weights(models.BACKBONES["dinov2"])
    assert capfd.readouterr().err == ""
    assert hub_logging.get_logger("huggingface_hub").level == level  # its verbosity given back


def test_weights_path_as_bytes(tiny):
    """A bytes path (os.fsencode) names the same file as its str: it was read as a corrupt file."""
    from zsiqa import Scorer
    dis, ref = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)), torch.zeros(1, 3, 224, 224)
    want = Scorer(tiny[0], "l2", device="cpu", weights=tiny[1])(dis, ref)
    got = Scorer(tiny[0], "l2", device="cpu", weights=os.fsencode(tiny[1]))(dis, ref)
    assert torch.equal(got, want)


def test_float8_weights_are_checked_not_a_traceback(tmp_path):
    """float8 tensors have no sum kernel: the finiteness check reads them as float32, so a
    finite float8 state dict loads and one holding NaN is refused in one line."""
    torch.save({"a": torch.tensor([1.0, -2.0, 0.5]).to(torch.float8_e4m3fn)}, tmp_path / "ok.pth")
    got = weights.read_state_dict(str(tmp_path / "ok.pth"))
    assert got["a"].float().tolist() == [1.0, -2.0, 0.5]
    torch.save({"a": torch.tensor([1.0, float("nan")]).to(torch.float8_e4m3fn)}, tmp_path / "nan.pth")
    with pytest.raises(UserError, match="NaN|infinit"):
        weights.read_state_dict(str(tmp_path / "nan.pth"))
