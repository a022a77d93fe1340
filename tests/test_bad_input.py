"""Every bad input: one line on stderr, exit code 2, no traceback, nothing silently wrong."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import run_single_img
from helpers import ROOT, fails_one_line


@pytest.fixture
def imgs(tmp_path):
    def make(name, w=240, h=230, seed=0):
        p = tmp_path / name
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        return str(p)
    return make


def _fails(capsys, argv, match):
    return fails_one_line(capsys, lambda: run_single_img.main(argv), match, warnings=False)


def _base(tiny, ref, dis, *extra):
    name, weights = tiny
    return ["-ref", ref, "-dis", dis, "-m", name, "--weights", weights, "--device", "cpu", *extra]


def test_missing_file(tiny, imgs, capsys, tmp_path):
    _fails(capsys, _base(tiny, imgs("a.png"), str(tmp_path / "nope.png")), "image not found")


def test_not_an_image_and_corrupt(tiny, imgs, capsys, tmp_path):
    (tmp_path / "t.png").write_text("hello")
    _fails(capsys, _base(tiny, imgs("a.png"), str(tmp_path / "t.png")), "cannot read image")
    good = imgs("b.png")
    (tmp_path / "cut.png").write_bytes(open(good, "rb").read()[:100])
    _fails(capsys, _base(tiny, imgs("a.png"), str(tmp_path / "cut.png")), "cannot read image")


def test_different_sizes(tiny, imgs, capsys):
    _fails(capsys, _base(tiny, imgs("a.png", 240, 230), imgs("b.png", 250, 230)), "sizes differ")


def test_side_under_224_unless_resized(tiny, imgs, capsys):
    ref, dis = imgs("a.png", 200, 230), imgs("b.png", 200, 230, 1)
    _fails(capsys, _base(tiny, ref, dis), "under 224")
    assert run_single_img.main(_base(tiny, ref, dis, "-r", "224")) == 0
    assert capsys.readouterr().out.startswith("wsd\t")


def test_unknown_model_and_distance(tiny, imgs, capsys):
    a, b = imgs("a.png"), imgs("b.png", seed=1)
    _fails(capsys, ["-ref", a, "-dis", b, "-m", "resnet9000"], "unknown model")
    _fails(capsys, _base(tiny, a, b, "-d", "l2,psnr"), "unknown distance")
    _fails(capsys, _base(tiny, a, b, "--precision", "fp8"), "unknown precision")
    _fails(capsys, _base(tiny, a, b, "--bogus-flag"), "unrecognized arguments")


def test_distance_the_backbone_cannot_take(tiny, imgs, capsys):
    name, weights = tiny
    _fails(capsys, ["-ref", imgs("a.png"), "-dis", imgs("b.png", seed=1), "-m", "embed_" + name, "-d", "l2",
                    "--weights", weights], "does not apply")


def test_weights_of_wrong_architecture(tiny, imgs, capsys, tmp_path):
    a, b = imgs("a.png"), imgs("b.png", seed=1)
    _fails(capsys, ["-ref", a, "-dis", b, "-m", "clip_vitb32", "--weights", tiny[1]], "does not fit clip_vitb32")
    _fails(capsys, ["-ref", a, "-dis", b, "-m", "dinov1", "--weights", tiny[1]], "does not fit dinov1")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk" * 10)
    dino = ["-ref", a, "-dis", b, "-m", "dinov1", "--weights"]
    _fails(capsys, [*dino, str(tmp_path / "junk.pt")], "cannot read weights")
    _fails(capsys, [*dino, str(tmp_path / "none.pt")], "weights file not found")


@pytest.mark.parametrize("model,file", [("clip_vitb32", "ViT-B-32.pt"), ("dinov1", "dino_vitbase16_pretrain.pth")])
def test_missing_weights_offline_names_file_and_places(imgs, tmp_path, model, file):
    """A real process: no weights anywhere, offline → exit 2, one line naming the file."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "TORCH_HOME": str(tmp_path / "torch"),
           "HF_HOME": str(tmp_path / "hf"), "ZSIQA_WEIGHTS_DIR": str(tmp_path / "w"), "ZSIQA_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "run_single_img.py"),
                           "-ref", imgs("a.png"), "-dis", imgs("b.png", seed=1),
                           "-m", model], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert file in lines[0] and str(tmp_path / "w") in lines[0] and "offline" in lines[0]


def test_failed_download_is_one_line(imgs, tmp_path, monkeypatch, capsys):
    """Online but unreachable (a closed local port): the download error is reported, not raised."""
    from zsiqa import models
    monkeypatch.setitem(models.BACKBONES, "dinov1", models.BACKBONES["dinov1"].__class__(
        **{**models.BACKBONES["dinov1"].__dict__,
           "weights": models.Weights("dino_vitbase16_pretrain.pth", "http://127.0.0.1:9/dino.pth",
                                     lambda: [str(tmp_path / "c" / "dino.pth")], "test")}))
    monkeypatch.delenv("ZSIQA_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("ZSIQA_WEIGHTS_DIR", str(tmp_path / "w"))
    _fails(capsys, ["-ref", imgs("a.png"), "-dis", imgs("b.png", seed=1), "-m", "dinov1"], "download failed")


def test_weights_with_nan_or_a_plain_pickle(tiny, imgs, capsys, tmp_path):
    """NaN weights would make every score NaN with exit 0; a plain pickle used to print torch's
    two-line protocol warning before the error line."""
    import pickle

    import torch
    sd = torch.load(tiny[1])
    sd["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    a, b = imgs("a.png"), imgs("b.png", seed=1)
    _fails(capsys, ["-ref", a, "-dis", b, "-m", tiny[0], "--weights", str(tmp_path / "nan.pth")], "NaN or infinite")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"a": [1, 2, 3]}, f, protocol=4)
    _fails(capsys, ["-ref", a, "-dis", b, "-m", tiny[0], "--weights", str(tmp_path / "plain.pkl")], "weights")


def test_map_file_that_cannot_be_written(tiny, imgs, capsys, tmp_path):
    (tmp_path / "maps" / "l2.png").mkdir(parents=True)  # a folder where the heatmap goes
    _fails(capsys, _base(tiny, imgs("a.png"), imgs("b.png", seed=1), "-d", "l2", "--maps", str(tmp_path / "maps")),
           "cannot write")


@pytest.mark.parametrize("script, command", [("run", "eval"), ("run_single_img", "score"), ("calc_scores", "corr"),
                                             ("bench", "bench")])
def test_help_shows_the_commands_text(script, command, capsys):
    """--help exits 0 with the command's text (summary and examples), under the script's name,
    and every option explained."""
    import importlib

    from zsiqa import cli
    mod = importlib.import_module(script)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    out = capsys.readouterr().out
    doc = cli.COMMANDS[command].doc
    assert e.value.code == 0 and out.startswith(f"usage: {script}.py ") and doc.splitlines()[0] in out
    assert f"  zsiqa {command}" in out
    undocumented = [a.dest for a in cli.build_parser(command)._actions if not a.help]
    assert undocumented == [], undocumented


def test_zsiqa_lists_whole_sentences_and_refuses_an_unknown_command_in_one_line(capsys):
    """`zsiqa --help` gives each command's first sentence whole (bench's and models' were cut
    mid-sentence); an unknown command is one `error:` line, exit 2 (the usage followed it)."""
    from zsiqa import cli
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for name in cli.COMMANDS:
        line = next(line for line in out.splitlines() if line.startswith(f"  {name} "))
        assert line.rstrip().endswith(".") and line.split(None, 1)[1] in " ".join(cli.COMMANDS[name].doc.split())
    line = fails_one_line(capsys, lambda: cli.main(["nosuchcmd"]), warnings=False)
    assert line.startswith("error: unknown command 'nosuchcmd'"), line


def test_an_upper_bound_is_not_explained_by_the_window(capsys):
    """-r 16385 is over the largest size, which has nothing to do with the 224-px window."""
    from zsiqa import cli
    for value, said in (("16385", "must be at most 16384, got 16385"), ("200", "at least 224 (the window size)")):
        with pytest.raises(SystemExit):
            cli.main(["score", "-ref", "a.png", "-dis", "b.png", "-r", value])
        assert said in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_stdout_full_or_closed_is_one_line(unbuffered):
    """A full disk under stdout (/dev/full) or a closed stdout: one line and 2, not a traceback
    (an OSError from print, or from the interpreter's flush at exit, which buffered output
    reaches only then: hence both PYTHONUNBUFFERED settings)."""
    if not os.path.exists("/dev/full"):  # Linux has it; the closed-stdout case below runs everywhere
        pytest.fail("this test needs /dev/full (Linux)")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONUNBUFFERED": unbuffered}
    with open("/dev/full", "w") as full:
        for args in ([], ["--help"], ["score", "--help"], ["models"]):
            proc = subprocess.run([sys.executable, "-m", "zsiqa", *args], cwd=ROOT, stdout=full, stderr=subprocess.PIPE,
                                  text=True, timeout=300, env=env)
            assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
                "error: cannot write to standard output: No space left on device"], (args, proc.stderr)
    for args, match in ((["models"], "standard output is closed"), (["eval", "--bogus"], "arguments are required")):
        closed = subprocess.run(["sh", "-c", f'exec "{sys.executable}" -m zsiqa {" ".join(args)} >&-'], cwd=ROOT,
                                capture_output=True, text=True, timeout=300, env=env)
        lines = closed.stderr.strip().splitlines()
        assert closed.returncode == 2 and len(lines) == 1 and match in lines[0], closed.stderr


@pytest.mark.parametrize("args", [["models", "--json"], ["eval", "--help"]])
def test_reader_that_stops_early_ends_quietly(args):
    """`zsiqa models --json | head -c1`: the reader is gone before the table is written; the
    command ends as a SIGPIPE'd tool would (141), without a BrokenPipeError traceback, also
    when argparse prints --help and exits."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([sys.executable, "-m", "zsiqa", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before the command has imported its modules, let alone printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == "", err
