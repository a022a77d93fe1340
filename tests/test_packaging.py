"""What a user who installs the wheel gets, from a folder unrelated to the checkout: the version,
the authors' published per-image files (`zsiqa corr --published`), the example images of the
README's API snippet; a wheel holding exactly the package's files, built without leaving anything
in the source tree; the licence and the citation; the CLIP backbones without pkg_resources, with
either distribution of the `clip` package."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
import tomllib

from helpers import GOLDEN, ROOT, close
from zsiqa import __version__, cli

README = (ROOT / "README.md").read_text()


def _readme_row(backbone, distance):
    """(PIPAL SRCC, PLCC) of a row of the README's accuracy table."""
    m = re.search(rf"^\| `{backbone}` \| {distance} \| ([\d.]+) / ([\d.]+) \|", README, re.M)
    return float(m[1]), float(m[2])


def _tree(folder):
    """Every file under folder (relative paths), Python's caches left out."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The checkout's files as a clone has them (tracked, and new ones git does not ignore), in a
    fresh folder that also holds a stale build/lib/zsiqa/gone.py, as an earlier setuptools build
    of a since-deleted module leaves it."""
    git = shutil.which("git")
    listing = subprocess.run([git, "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True) if git else None
    if listing is None or listing.returncode != 0:
        pytest.skip("the checkout is not a git working tree (or git is missing): its file list is unknown")
    src = tmp_path_factory.mktemp("clone")
    for name in listing.stdout.splitlines():
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    (src / "build" / "lib" / "zsiqa").mkdir(parents=True)
    (src / "build" / "lib" / "zsiqa" / "gone.py").write_text("STALE = True\n")
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory):
    """(wheel path, the source tree's files before the build)."""
    before, out = _tree(source), tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(out), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("zsiqa-*.whl")), before


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel[0])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


def _run(installed, cwd, *args, code=None):
    """python -m zsiqa ARGS (or python -c CODE) with only the installed copy importable, in cwd."""
    env = {**os.environ, "PYTHONPATH": str(installed)}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "zsiqa", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.subprocess
def test_wheel_holds_exactly_the_package_files_and_leaves_the_tree_alone(source, wheel):
    path, before = wheel
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    shipped = sorted(n for n in names if n.startswith("zsiqa/"))
    assert shipped == sorted(n for n in _tree(source) if n.startswith("zsiqa/"))  # no stale gone.py
    assert "zsiqa/data/published/pipal_dinov1_wsd.csv" in shipped and "zsiqa/data/examples/ref.png" in shipped
    assert _tree(source) == before  # no build/ or egg-info folder left behind
    requires = re.findall(r"^Requires-Dist: ([\w.-]+)", meta, re.M)
    assert "torch" in requires and "setuptools" not in requires and "clip-anytorch" in requires
    assert re.search(r"^License-Expression: BSD-3-Clause$", meta, re.M) and "License-File: LICENSE" in meta
    assert "Project-URL: Paper, https://arxiv.org/abs/2409.07650" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


@pytest.mark.slow
@pytest.mark.subprocess
def test_installed_wheel_answers_from_an_unrelated_folder(installed, tmp_path):
    """`python -m zsiqa --version`, `corr --published NAME` (the README's row, no warning) and the
    bundled example images, with nothing of the checkout importable or at hand."""
    version = _run(installed, tmp_path, "--version")
    assert (version.returncode, version.stdout) == (0, f"zsiqa {__version__}\n"), version.stderr
    corr = _run(installed, tmp_path, "corr", "--published", "pipal_dinov1_wsd", "--json")
    assert corr.returncode == 0 and corr.stderr == "", corr.stderr
    got = json.loads(corr.stdout)
    assert (round(got["srcc"], 4), round(got["plcc"], 4)) == _readme_row("dinov1", "wsd")
    assert got["file"].startswith(str(installed))
    listed = _run(installed, tmp_path, "corr", "--published", "list")
    assert len(listed.stdout.split()) == 6 and "live_psnr" in listed.stdout.split()
    code = ("import os, zsiqa\n"
            "from zsiqa import example\n"
            "from PIL import Image\n"
            "paths = [example(n) for n in ('ref.png', 'dis_blur.png', 'dis_jpeg.png', 'dis_noise.png')]\n"
            "print(zsiqa.__file__, *[Image.open(p).size for p in paths])")
    images = _run(installed, tmp_path, code=code)
    assert images.returncode == 0 and images.stdout.startswith(str(installed)), images.stderr
    assert images.stdout.count("(384, 288)") == 4


def test_version_flag(capsys):
    for flag in ("--version", "-V"):
        with pytest.raises(SystemExit) as e:
            cli.main([flag])
        assert e.value.code == 0 and capsys.readouterr().out == f"zsiqa {__version__}\n"


def test_licence_citation_and_links():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "BSD-3-Clause" and meta["license-files"] == ["LICENSE"]
    assert not [d for d in meta["dependencies"] if re.match(r"setuptools\b", d)]
    assert meta["urls"]["Paper"] == "https://arxiv.org/abs/2409.07650"
    licence = (ROOT / "LICENSE").read_text()
    assert "BSD 3-Clause" in licence and "The ZS-IQA authors" in licence
    cff = (ROOT / "CITATION.cff").read_text()
    assert "cff-version: 1.2.0" in cff and "2409.07650" in cff and "Foundation Models Boost" in cff
    assert [m for m in ("Ghildyal", "Barman", "Zadtootaghaj") if m not in cff] == []
    bib = re.search(r"```bibtex\n(@\w+\{.*?\n\})\n```", README, re.S)
    assert bib and "2409.07650" in bib[1] and "ICASSP" in bib[1] and bib[1].count("{") == bib[1].count("}")
    requirements = (ROOT / "requirements.txt").read_text()
    assert not re.search(r"^setuptools", requirements, re.M)


def test_openai_addresses_are_the_clip_packages():
    """The download table zsiqa keeps holds the clip package's own addresses (read from its
    source, not run: its module imports pkg_resources)."""
    import importlib.util

    from zsiqa.weights import OPENAI_URLS
    folder = importlib.util.find_spec("clip").submodule_search_locations[0]
    tree = ast.parse(open(os.path.join(folder, "clip.py")).read())
    table = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "_MODELS")
    assert OPENAI_URLS == {k: table[k] for k in OPENAI_URLS}


# ---------------------------------------------------------------- the `clip` package, either distribution

def _clip_scores(pythonpath, checkpoint):
    """In a process where pkg_resources cannot be imported and `pythonpath` comes first: the
    clip_vitb32 and embed_clip_rn50 scores of the golden pair0, and where clip.model was read from."""
    ref, dis = str(GOLDEN / "models" / "pair0_ref.png"), str(GOLDEN / "models" / "pair0_dis_blur.png")
    code = f"""
import json, sys
sys.modules["pkg_resources"] = None  # setuptools 81 and later: no pkg_resources
from zsiqa import Scorer
from zsiqa.weights import clip_model
vit = Scorer("clip_vitb32", "l2,cos", device="cpu", precision="fp32", weights={checkpoint("clip_vitb32")!r})
rn = Scorer("embed_clip_rn50", "cos", device="cpu", precision="fp32", weights={checkpoint("clip_rn50")!r})
out = {{d: float(v) for d, v in vit.score({dis!r}, {ref!r}).items()}}
out["embed_clip_rn50"] = float(rn({dis!r}, {ref!r}))
print(json.dumps({{"scores": out, "model_file": clip_model().__file__, "clip_imported": "clip" in sys.modules}}))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _golden_pair0(golden):
    rows = golden["models"] + golden["models_more"]
    want = {r["distance"]: r["score"] for r in rows if r["model"] == "clip_vitb32" and r["ref"] == "pair0_ref.png"}
    want["embed_clip_rn50"] = next(r["score"] for r in rows if r["model"] == "embed_clip_rn50"
                                   and r["ref"] == "pair0_ref.png")
    return want


def _check(got, golden, folder):
    want = _golden_pair0(golden)
    assert [k for k in ("l2", "cos", "embed_clip_rn50") if not close(got["scores"][k], want[k])] == [], (got, want)
    assert got["model_file"] == str(folder / "clip" / "model.py") and not got["clip_imported"]


@pytest.mark.golden
@pytest.mark.subprocess
def test_clip_backbones_never_run_the_clip_package_init(golden, checkpoint, tmp_path):
    """A `clip` package whose __init__ fails (as both distributions' does without pkg_resources)
    still gives the CLIP backbones: only its model.py is read; golden scores unchanged."""
    from zsiqa.weights import clip_model
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "__init__.py").write_text("raise ImportError('No module named pkg_resources')\n")
    shutil.copy(clip_model().__file__, tmp_path / "clip" / "model.py")
    _check(_clip_scores(tmp_path, checkpoint), golden, tmp_path)


@pytest.fixture(scope="module")
def openai_clip(tmp_path_factory):
    """openai-clip (the distribution pyiqa depends on), installed into its own folder from the
    package index; skips when the index cannot be reached."""
    cache = ROOT / ".cache" / "openai-clip"
    if not list(cache.glob("openai*clip-1.0.1*")):
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                              "-d", str(cache), "openai-clip==1.0.1"], capture_output=True, text=True, timeout=300)
        if got.returncode != 0:
            pytest.skip(f"openai-clip could not be downloaded (no package index?): {got.stderr.strip()[-200:]}")
    target = tmp_path_factory.mktemp("openai_clip")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(next(cache.glob("openai*clip-1.0.1*")))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


@pytest.mark.golden
@pytest.mark.subprocess
@pytest.mark.network
def test_clip_backbones_with_the_openai_clip_distribution(golden, checkpoint, openai_clip):
    """pyiqa's `openai-clip` installs the same `clip` folder as clip-anytorch, with a slightly
    different model.py (its attention pool queries every position): golden scores unchanged."""
    _check(_clip_scores(openai_clip, checkpoint), golden, openai_clip)


def test_sdist_carries_the_build_backend():
    """pyproject.toml names an in-tree backend: an sdist without it could not be built into a wheel."""
    system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    path = f"{system['backend-path'][0]}/{system['build-backend']}.py"
    assert (ROOT / path).is_file() and f"include {path}" in (ROOT / "MANIFEST.in").read_text().splitlines()
