"""`zsiqa models` fits 100 columns (rows were ~260 characters wide); --wide and --json keep every detail."""
import json

from zsiqa import cli, models


def test_models_table_fits_100_columns(capsys):
    assert cli.run_command("models", []) == 0
    table = capsys.readouterr().out
    assert max(len(line) for line in table.splitlines()) <= 100, table
    names = [line.split()[0] for line in table.splitlines()[1:len(models.BACKBONES) + 1]]
    assert names == list(models.BACKBONES)
    assert "alias openclip_vitb32 = openclip_vitb32_laion" in table and "--wide" in table
    assert cli.run_command("models", ["--wide"]) == 0
    wide = capsys.readouterr().out
    for b in models.BACKBONES.values():  # every architecture, weights file and map shape, as before
        assert b.arch in wide and b.weights.file in wide and b.shape in wide, b.name
    assert cli.run_command("models", ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["weights"] for r in rows] == [b.weights.file for b in models.BACKBONES.values()]
