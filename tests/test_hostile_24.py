"""A hostile user against the fixes of issue 24 (round four): a symlink planted where the
writability probe of a maps folder goes, weights archives whose records have one name twice
or alike but for case (torch's reader may read another record than the one checked), and a
method name that a Markdown viewer with math support would typeset."""
import io
import zipfile

import pytest
import torch

from zsiqa import plots, report, weights
from zsiqa.errors import UserError
from zsiqa.stats import compare_methods

# ---------------------------------------------------------------- output paths

def test_the_write_probe_of_a_maps_folder_never_follows_a_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / ".zsiqa_write_test").symlink_to(victim)  # where the probe was written
    plots.check_folder(str(folder))
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in folder.iterdir()) == [".zsiqa_write_test"]  # nothing left behind


def test_the_write_probe_still_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        probe = folder / "x"
        try:
            probe.write_text("")
        except OSError:
            with pytest.raises(UserError, match="cannot write to"):
                plots.check_folder(str(folder))
        else:  # root ignores the mode: nothing to test here
            probe.unlink()
    finally:
        folder.chmod(0o700)


# ---------------------------------------------------------------- weights archives with twin records

def _archive(path, extra):
    """A torch.save archive of {'w': [1, 2, 3, 4]} rewritten with `extra(name)` → [(name, bytes)]
    records after each original record (stored, uncompressed)."""
    buffer = io.BytesIO()
    torch.save({"w": torch.tensor([1.0, 2.0, 3.0, 4.0])}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info in source.infolist():
            z.writestr(info.filename, source.read(info))
            for name, data in extra(info.filename):
                z.writestr(name, data)
    return str(path)


SEVENS = torch.full((4,), 7.0).numpy().tobytes()


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_a_record_written_three_times_is_refused(tmp_path):
    # torch's reader finds one of the three (here not the last, which zipfile checks)
    path = _archive(tmp_path / "dup.pt", lambda n: [(n, SEVENS), (n, SEVENS[:8] * 2)] if n.endswith("/data/0") else [])
    with pytest.raises(UserError, match=r"archive/data/0.*twice"):
        weights.read_state_dict(path)


def test_a_record_alike_but_for_case_is_refused(tmp_path):
    # torch looks records up ignoring case: it reads the twin (a bomb there would never be checked)
    path = _archive(tmp_path / "case.pt", lambda n: [("archive/daTA/0", SEVENS)] if n.endswith("/data/0") else [])
    with zipfile.ZipFile(path) as z:
        assert z.read("archive/data/0")[:4] == torch.tensor([1.0]).numpy().tobytes()
    with pytest.raises(UserError, match="alike but for case"):
        weights.read_state_dict(path)


def test_an_archive_with_no_twin_still_loads(tmp_path):
    path = _archive(tmp_path / "ok.pt", lambda n: [])
    assert weights.read_state_dict(path)["w"].tolist() == [1.0, 2.0, 3.0, 4.0]


# ---------------------------------------------------------------- names in report.md

def test_a_dollar_in_a_method_name_is_shown_literally_in_markdown():
    names = ["$x^2$", "b"]
    scores = {m: {f"{k}.png": 1.0 + 0.1 * k + j for k in range(6)} for j, m in enumerate(names)}
    table = compare_methods(scores)
    rows = [{**table[m], "set": m, "distance": "l2"} for m in names]
    comparison = report.Comparison({"l2": rows}, {"l2": scores}, {"l2": True}, "l2", {}, "about")
    line = next(x for x in report.markdown(comparison).splitlines() if "x^2" in x)
    assert "\\$x^2\\$" in line
