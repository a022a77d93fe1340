"""A hostile user against the fixes of issue 24 (round four): a symlink planted where the
writability probe of a maps folder goes, weights archives whose records have one name twice
or alike but for case (torch's reader may read another record than the one checked), and a
method name that a Markdown viewer with math support would typeset."""
import pytest

from zsiqa import plots
from zsiqa.errors import UserError

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
