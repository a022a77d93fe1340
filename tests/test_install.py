"""The checkout installs as a package: `pip install --target` gives `import zsiqa` and the
`zsiqa` command, and a user's project with its own models.py, utils.py and datasets.py keeps
them while using zsiqa (neither side shadows the other)."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import tomllib

from helpers import GOLDEN, ROOT, close, random_image

USER_MODULES = {
    "models.py": "MARK = 'the user models'\n",
    "utils.py": "MARK = 'the user utils'\n",
    "datasets.py": "def load_dataset(name):\n    return 'user:' + name\n",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The checkout installed with pip into a fresh folder (built from a copy of its sources, so
    no build folder of the checkout is involved); returns that folder."""
    src, target = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("site")
    for folder in ("zsiqa", "tools"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return target


@pytest.fixture
def project(tmp_path):
    """A user's project folder holding its own models.py, utils.py and datasets.py."""
    for name, text in USER_MODULES.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def _env(installed, *extra):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), *extra])}


def test_version_is_one_string():
    import zsiqa
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "zsiqa" and meta["version"] == zsiqa.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", zsiqa.__version__)
    assert meta["scripts"] == {"zsiqa": "zsiqa.cli:main"}


def test_every_module_of_the_checkout_is_installed(installed):
    """Subpackages too (zsiqa/store/): pyproject's package list names each."""
    ours = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "zsiqa").rglob("*.py"))
    assert ours == sorted(p.relative_to(installed).as_posix() for p in (installed / "zsiqa").rglob("*.py"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_project_with_its_own_modules_imports_zsiqa_and_scores(installed, project, tiny):
    """Both sides intact: the user's models/utils/datasets are theirs, zsiqa comes from the
    installed copy (not the checkout) and scores a pair as the checkout does."""
    name, weights = tiny
    a, b = random_image(project / "a.png", 240, 232, 0), random_image(project / "b.png", 240, 232, 1)
    code = f"""
import json, sys
import models, utils, datasets
from datasets import load_dataset
import zsiqa
from zsiqa import Scorer, UserError, DISTANCES, BACKBONES
import zsiqa.models
from tinymodel import register_tiny
register_tiny(zsiqa.models.BACKBONES)
score = float(Scorer({name!r}, "l2", weights={weights!r}, device="cpu")(dis={b!r}, ref={a!r}))
print(json.dumps({{"models": models.MARK, "utils": utils.MARK, "datasets": load_dataset("imagenet-1k"),
                  "zsiqa": zsiqa.__file__, "user_models": models.__file__, "score": score,
                  "distances": list(DISTANCES), "has_dinov1": "dinov1" in BACKBONES}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                          env=_env(installed, str(ROOT / "tests")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert (got["models"], got["utils"], got["datasets"]) == ("the user models", "the user utils", "user:imagenet-1k")
    assert got["zsiqa"].startswith(str(installed)) and got["user_models"].startswith(str(project))
    assert got["distances"][:5] == ["l2", "cos", "skld", "jsd", "wsd"] and got["has_dinov1"]
    from zsiqa.scorer import Scorer
    want = float(Scorer(name, "l2", weights=weights, device="cpu")(dis=b, ref=a))
    assert got["score"] == pytest.approx(want, rel=1e-6)


@pytest.mark.slow
@pytest.mark.subprocess
def test_help_needs_no_torch(installed, project):
    """`python -m zsiqa score --help` parses and prints without importing torch (a fast first answer)."""
    code = "import sys, runpy; sys.argv = ['zsiqa', 'score', '--help']\n" \
           "try:\n    runpy.run_module('zsiqa', run_name='__main__')\nexcept SystemExit as e:\n" \
           "    assert e.code == 0, e.code\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                          env=_env(installed))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("False"), proc.stdout + proc.stderr


@pytest.mark.golden
def test_installed_command_prints_what_the_script_prints(installed, project, golden, checkpoint):
    """`zsiqa score` (the console script pip wrote) from another folder prints what
    run_single_img.py prints: the golden values of the published protocol."""
    rows = [r for r in golden["models"] if r["model"] == "clip_vitb32" and r["ref"] == "pair0_ref.png"]
    args = ["score", "-ref", str(GOLDEN / "models" / rows[0]["ref"]), "-dis", str(GOLDEN / "models" / rows[0]["dis"]),
            "-m", "clip_vitb32", "-d", ",".join(r["distance"] for r in rows), "--device", "cpu",
            "--weights", checkpoint("clip_vitb32")]
    command = subprocess.run([str(installed / "bin" / "zsiqa"), *args], cwd=project, capture_output=True, text=True,
                             env=_env(installed))
    script = subprocess.run([sys.executable, str(ROOT / "run_single_img.py"), *args[1:]], cwd=project,
                            capture_output=True, text=True)
    assert command.returncode == script.returncode == 0, command.stderr + script.stderr
    assert command.stdout == script.stdout
    printed = dict(line.split("\t") for line in command.stdout.strip().splitlines())
    assert all(close(float(printed[r["distance"]]), r["score"]) for r in rows), (printed, rows)


def test_the_api_prints_no_warning_of_the_clip_package(checkpoint):
    """A CLIP Scorer built from Python prints nothing (the clip package's import warned that
    pkg_resources is deprecated: noise for the user, which the CLI already hid)."""
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from zsiqa import Scorer\n"
            f"Scorer('clip_vitb32', 'l2', device='cpu', weights={str(checkpoint('clip_vitb32'))!r})\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok" and proc.stderr == "", proc.stderr[-2000:]
