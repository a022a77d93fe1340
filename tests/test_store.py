"""The results store on its own, without the eval command: records and the refusal of another
run's settings, image stamps, torn and repeated rows, atomic writes, spreadsheet-safe cells,
locks, summaries, the row writer's resume, and `Store` running a set from start to finish."""
import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass

import pytest

from zsiqa import results
from zsiqa.errors import UserError
from zsiqa.store.csvfiles import cells, csv_line

SETTINGS = {"model": "m", "precision": "fp32", "device": "cpu", "model_norm": False, "resize": None, "swd_seed": 0,
            "weights": "sha256:w"}
HOSTILE = ["=1+1", "+1", "-1", "@A", "'", "''", "'=x", "\tx", "\rx", "x\ry", "x\ny", "a\r\nb", 'a"b', '"', "a,b",
           ",", " =x", "é", "\u2028=", "plain.png"]
DANGER = ("=", "+", "-", "@", "\t", "\r")  # a cell starting so is a formula to a spreadsheet (OWASP)


@dataclass
class Toy:
    """A labelled set as the store sees one (datasets.Dataset's fields): pairs [(ref, dis, label)]."""
    root: str
    pairs: list
    name: str = "toy"
    higher_better: bool = True
    labelled: bool = True
    ref_root: str = None

    def ref_path(self, ref):
        return os.path.join(self.ref_root or self.root, ref)

    def dis_path(self, dis):
        return os.path.join(self.root, dis)


def _toy(tmp_path, labels=(1.0, 2.0, 3.0)):
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    for name in ("r.png", "a.png", "b.png", "c.png"):
        if not (root / name).exists():
            (root / name).write_bytes(name.encode() * 10)
    return Toy(str(root), [("r.png", d, y) for d, y in zip(("a.png", "b.png", "c.png"), labels)])


def _prepare(store, toy, path, settings=SETTINGS, overwrite=False, notes=None):
    """One set's file made ready by `store` (Store.records, Store.prepare); returns (pairs held, record)."""
    stamps = results.image_stamps(toy, toy.pairs)
    records = store.records(toy, settings, {path: ("l2", ("", 0), False)}, stamps)
    order = [(d, r) for r, d, _ in toy.pairs]
    held = store.ready_files([(records, results.labels_of(toy.pairs), order, stamps)], overwrite,
                         warn=(notes if notes is not None else []).append)
    return held[path], records[path]


def _rows(path):
    return list(csv.reader(io.StringIO(open(path, encoding="utf-8", newline="").read(), newline="")))


# ---------------------------------------------------------------- records

def test_record_written_read_back_and_made_of_the_set(tmp_path):
    toy, store = _toy(tmp_path), results.Store(str(tmp_path / "out"))
    path = store.path(toy.name, "m", "l2")
    assert path == str(tmp_path / "out" / "toy_m_l2.csv")
    os.makedirs(store.folder)
    held, record = _prepare(store, toy, path)
    assert held == set()
    assert results.read_record(path) == record == json.loads(open(tmp_path / "out" / "toy_m_l2.json").read())
    text = "".join(f"{d}\tr.png\t{y!r}\n" for _, d, y in toy.pairs)  # the labels digest, by hand
    assert record["labels_sha256"] == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert (record["dataset"], record["distance"], record["pred_higher_better"], record["robustness"]) == \
        ("toy", "l2", False, "none")
    assert record["ref_dir"] == record["dis_dir"] == toy.root and record["layers"] is None


@pytest.mark.parametrize("key, value", [("model", "other"), ("swd_seed", 1), ("precision", "fp16"),
                                        ("weights", "sha256:v"), ("device", "cuda")])
def test_another_runs_settings_are_refused_and_the_file_kept(tmp_path, key, value):
    toy, store = _toy(tmp_path), results.Store(str(tmp_path))
    path = store.path(toy.name, "m", "l2")
    _prepare(store, toy, path)
    with _closing(store.writer({0: path})) as rows:
        rows.write(0, "a.png", "r.png", 1.0, (0.5,))
    kept = open(path, "rb").read()
    with pytest.raises(UserError, match=f"was made with {key} .*not resumed: pass --overwrite") as e:
        _prepare(store, toy, path, {**SETTINGS, key: value})
    assert "\n" not in str(e.value) and open(path, "rb").read() == kept
    held, _ = _prepare(store, toy, path, {**SETTINGS, key: value}, overwrite=True)  # --overwrite: afresh
    assert held == set() and _rows(path) == [["dis", "ref", "mos", "pred"]]


def test_edited_labels_resume_with_the_current_labels(tmp_path):
    toy, store = _toy(tmp_path), results.Store(str(tmp_path))
    path = store.path(toy.name, "m", "l2")
    _prepare(store, toy, path)
    with _closing(store.writer({0: path})) as rows:
        rows.write(0, "a.png", "r.png", 1.0, (0.5,))
    held, _ = _prepare(store, _toy(tmp_path, labels=(9.0, 2.0, 3.0)), path)  # labels do not make predictions
    assert held == {("a.png", "r.png")} and _rows(path)[1] == ["a.png", "r.png", "9.0", "0.5"]


def test_a_record_of_the_wrong_type_is_one_line(tmp_path):
    path = str(tmp_path / "x.csv")
    open(path, "w").write("dis,ref,mos,pred\n")
    open(tmp_path / "x.json", "w").write(json.dumps({"dataset": "x", "pred_higher_better": "false"}))
    with pytest.raises(UserError, match='pred_higher_better is "false" \\(a string\\), expected true or false'):
        results.read_record(path)
    os.remove(tmp_path / "x.json")
    os.mkdir(tmp_path / "x.json")
    with pytest.raises(UserError, match="is a folder, not a file this tool wrote"):
        results.read_record(path)


# ---------------------------------------------------------------- image stamps

def test_image_stamps_tell_a_changed_image_even_with_its_old_time(tmp_path):
    toy = _toy(tmp_path)
    before = results.image_stamps(toy, toy.pairs)
    digest = results.save_stamps(str(tmp_path), before)
    assert os.path.isfile(tmp_path / results.STAMPS / f"images-{digest.split(':')[1]}.json")
    image = tmp_path / "images" / "b.png"
    st = os.stat(image)
    image.write_bytes(b"X" * st.st_size)  # same size, then its old modification time put back
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = results.image_stamps(toy, toy.pairs)
    keys = {("a.png", "r.png"), ("b.png", "r.png")}
    assert results.changed_pairs(str(tmp_path), {"images": digest}, "sha256:new", now, keys) == \
        ({("b.png", "r.png")}, ["b.png"])
    assert results.changed_pairs(str(tmp_path), {}, "sha256:new", now, keys) == (set(), [])  # no stamps: kept
    os.remove(tmp_path / results.STAMPS / f"images-{digest.split(':')[1]}.json")
    assert results.changed_pairs(str(tmp_path), {"images": digest}, "sha256:new", now, keys) == (keys, None)


def test_prepare_drops_the_rows_of_a_changed_image(tmp_path):
    toy, store = _toy(tmp_path), results.Store(str(tmp_path / "out"))
    path = store.path(toy.name, "m", "l2")
    os.makedirs(store.folder)
    _prepare(store, toy, path)
    with _closing(store.writer({0: path})) as rows:
        rows.write(0, "a.png", "r.png", 1.0, (0.5,))
        rows.write(0, "b.png", "r.png", 2.0, (0.25,))
    (tmp_path / "images" / "b.png").write_bytes(b"regenerated")
    notes = []
    held, _ = _prepare(store, toy, path, notes=notes)
    assert held == {("a.png", "r.png")} and [r[0] for r in _rows(path)] == ["dis", "a.png"]
    assert notes == ["warning: 1 image(s) changed since they were scored (e.g. b.png); their pairs are scored again"]


# ---------------------------------------------------------------- torn and repeated rows

def test_torn_last_row_is_left_out_and_rewritten_away(tmp_path):
    path = str(tmp_path / "x.csv")
    open(path, "wb").write(b"dis,ref,mos,pred\na,r,1.5,0.25\nb,r,2.5,0.5\nc,r,3.5,0.7")  # c: no newline
    assert results.read_done(path) == {("a", "r"): (1.5, (0.25,)), ("b", "r"): (2.5, (0.5,))}
    labels = {("a", "r"): 1.0, ("b", "r"): 2.0, ("c", "r"): 3.0}
    assert results.finish(path, labels, list(labels)) == [("a", "r", 1.0, (0.25,)), ("b", "r", 2.0, (0.5,))]
    assert open(path, "rb").read() == b"dis,ref,mos,pred\na,r,1.0,0.25\nb,r,2.0,0.5\n"


def test_torn_row_inside_a_quoted_name_is_left_out(tmp_path):
    path = str(tmp_path / "x.csv")
    open(path, "wb").write(b'dis,ref,mos,pred\n"a\nb",r,1.5,0.25\n"c\nd",r,2')  # a newline inside quotes is no end
    assert results.read_done(path) == {("a\nb", "r"): (1.5, (0.25,))}


def test_repeated_rows_collapse_to_the_last(tmp_path, capsys):
    path = str(tmp_path / "x.csv")
    open(path, "wb").write(b"dis,ref,mos,pred\na,r,1,0.1\nb,r,2,0.2\na,r,1,0.3\n")
    header, rows = results.read_table(path)
    assert [row for _, row in rows] == [["b", "r", "2", "0.2"], ["a", "r", "1", "0.3"]]
    assert "1 row(s) repeat a (dis, ref) pair that comes again later (first at line 2)" in capsys.readouterr().err
    results.finish(path, {("a", "r"): 1.0, ("b", "r"): 2.0}, [("a", "r"), ("b", "r")])
    assert open(path, "rb").read() == b"dis,ref,mos,pred\na,r,1.0,0.3\nb,r,2.0,0.2\n"


def test_part_files_are_merged_and_removed(tmp_path):
    path = str(tmp_path / "x.csv")
    open(path, "wb").write(b"dis,ref,mos,pred\na,r,1,0.1\n")
    open(results.part_path(path, 1), "wb").write(b"dis,ref,mos,pred\nb,r,2,0.2\n")
    assert results.exists(path) and results.collect(path) == {("a", "r"): (1.0, (0.1,)), ("b", "r"): (2.0, (0.2,))}
    results.finish(path, {("b", "r"): 2.0, ("a", "r"): 1.0}, [("b", "r"), ("a", "r")])
    assert open(path, "rb").read() == b"dis,ref,mos,pred\nb,r,2.0,0.2\na,r,1.0,0.1\n"
    assert os.listdir(tmp_path) == ["x.csv"]


# ---------------------------------------------------------------- atomic writes

def test_a_failing_replace_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "x.csv")
    results.write_atomic(path, b"old\n")

    def failing(*_):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(UserError, match="x.csv: No space left on device"):
        results.write_atomic(path, b"new\n")
    monkeypatch.undo()
    assert open(path, "rb").read() == b"old\n" and os.listdir(tmp_path) == ["x.csv"]
    results.write_atomic(path, b"new\n")
    assert open(path, "rb").read() == b"new\n" and os.listdir(tmp_path) == ["x.csv"]


def test_a_symlink_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "precious.csv"
    outside.write_bytes(b"keep\n")
    link = tmp_path / "x.csv"
    os.symlink(outside, link)
    results.write_table(str(link), ["a", "b"], [{"a": "=1", "b": 2.5, "other": "ignored"}])
    assert outside.read_bytes() == b"keep\n" and not os.path.islink(link)
    assert link.read_bytes() == b"a,b\n'=1,2.5\n"


def test_a_long_name_gets_a_short_temporary_name(tmp_path):
    path = str(tmp_path / ("n" * 250 + ".csv"))
    results.write_atomic(path, b"x\n")
    assert open(path, "rb").read() == b"x\n"


# ---------------------------------------------------------------- cells

@pytest.mark.parametrize("name", HOSTILE)
def test_cells_round_trip_and_no_cell_is_a_formula(name):
    data = csv_line([name, "r.png", 1.5, -0.25])
    row, = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert [results.from_cell(c) for c in row] == [name, "r.png", "1.5", "-0.25"]
    assert not row[0].startswith(DANGER) and row[3] == "-0.25"  # numbers as they are
    assert data.endswith(b"\n") and not data.endswith(b"\r\n")


@pytest.mark.parametrize("name", HOSTILE)
def test_rows_are_the_csv_writers_bytes(name):
    """csv_line gives exactly the bytes of Python's csv writer (cells through to_cell, rows ending in \\n)."""
    values = [name, None, 1.5, 0.1234567891234, float("nan"), -0.0, 3]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL).writerow(
        [results.to_cell(v) if isinstance(v, str) else v for v in values])
    assert csv_line(values) == (out.getvalue()[:-2] + "\n").encode("utf-8")


def test_quoting_by_hand():
    assert csv_line(['a"b', 1]) == b'"a""b",1\n'
    assert csv_line(["x\ry", 1]) == b'"x\ry",1\n'  # a bare \r would end the row for a reader
    assert csv_line(["=1", "a,b", None]) == b"'=1,\"a,b\",\n"
    assert csv_line([""]) == b'""\n'
    assert list(cells(csv.reader(["'=1,''x,'a"]))) == [["=1", "'x", "'a"]]


# ---------------------------------------------------------------- locks

def test_a_second_holder_is_refused_in_one_line(tmp_path):
    path = str(tmp_path / "x.csv")
    with results.Store(str(tmp_path)).lock([path], hint="wait, or use another -sdir"):
        with pytest.raises(UserError) as e:
            results.Lock([str(tmp_path / "y.csv"), path])
        assert str(e.value) == f"{path} is being written by another run (pid {os.getpid()}); wait for it to " \
                               "finish or use another -sdir/-s"
        results.Lock([str(tmp_path / "y.csv")]).release()  # y's lock was given back with the refusal
    assert open(results.lock_path(path)).read() == ""
    results.Lock([path]).release()


# ---------------------------------------------------------------- summaries

def _unlabelled(distance, mean, name="=set"):
    return {"set": name, "model": "m", "distance": distance, "mean": mean, "file": f"{name}_{distance}.csv"}


def test_summary_rows_of_a_repeated_run_are_replaced(tmp_path):
    store = results.Store(str(tmp_path))
    store.summarise([_unlabelled("l2", 1.0), _unlabelled("cos", 2.0)], labelled=False)
    store.summarise([_unlabelled("l2", 3.0)], labelled=False)  # the same key again: its row replaced
    rows = list(csv.DictReader(open(tmp_path / "summary_unlabelled.csv", newline="")))
    assert [(results.from_cell(r["set"]), r["distance"], r["mean"]) for r in rows] == \
        [("=set", "cos", "2.0"), ("=set", "l2", "3.0")]
    store.summarise([{"dataset": "d", "srcc": 0.5}])
    store.summarise([{"dataset": "d", "srcc": 0.5}])  # labelled summaries: appended
    rows = list(csv.DictReader(open(tmp_path / "summary.csv", newline="")))
    assert [r["dataset"] for r in rows] == ["d", "d"] and list(rows[0]) == results.SUMMARY_FIELDS


def test_summary_with_an_older_header_is_moved_aside(tmp_path, capsys):
    (tmp_path / "summary.csv").write_text("dataset,srcc\nold,0.1")  # an older header, no final newline
    results.append_summary(str(tmp_path), [{"dataset": "new"}])
    assert (tmp_path / "summary.old-1.csv").read_text() == "dataset,srcc\nold,0.1"
    assert [r["dataset"] for r in csv.DictReader(open(tmp_path / "summary.csv"))] == ["new"]
    assert "had an older header" in capsys.readouterr().err


# ---------------------------------------------------------------- the row writer

class _closing:
    """A RowWriter closed at the end of a with block."""

    def __init__(self, writer):
        self.writer = writer

    def __enter__(self):
        return self.writer

    def __exit__(self, *_):
        self.writer.close()


def test_row_writer_resumes_without_a_second_header_or_row(tmp_path):
    path = str(tmp_path / "x.csv")
    with _closing(results.RowWriter({0: path})) as rows:
        rows.write(0, "a", "r", 1, (0.5,))
        rows.write(0, "a", "r", 1, (0.5,))  # a pair already written: not again
    held = {0: set(results.read_done(path))}
    with _closing(results.RowWriter({0: path}, held=held)) as rows:
        rows.write(0, "a", "r", 1, (0.75,))  # held: skipped
        rows.write(0, "=b", "r", 2, (float("nan"),))
    assert open(path, "rb").read() == b"dis,ref,mos,pred\na,r,1.0,0.5\n'=b,r,2.0,nan\n"
    done = results.read_done(path)
    assert set(done) == {("a", "r"), ("=b", "r")} and results.done_keys(
        [(d, r, m, v) for (d, r), (m, v) in done.items()]) == {("a", "r")}  # nan: scored again on resume


def test_row_writer_writes_its_rows_again_to_a_replaced_file(tmp_path):
    path = str(tmp_path / "x.csv")
    writer = results.RowWriter({0: path}, results.Columns(labelled=False, blocks=(1, 2)))
    writer.write(0, "a", "r", None, (0.5, 0.25))
    writer.flush()
    os.replace(tmp_path / "x.csv", tmp_path / "moved.csv")  # an editor saving by rename, say
    writer.write(0, "b", "r", None, (1.0, 2.0))
    writer.close()
    assert writer.replaced == [path]
    assert open(path, "rb").read() == b"dis,ref,block_1,block_2\na,r,0.5,0.25\nb,r,1.0,2.0\n"


# ---------------------------------------------------------------- the entry point

def test_store_checks_names_before_any_work(tmp_path):
    store = results.Store(str(tmp_path / "out"))
    with pytest.raises(UserError, match="would take the name of a summary file"):
        store.check([str(tmp_path / "out" / "summary.csv")])
    with pytest.raises(UserError, match="bytes long, more than the file system's"):
        store.check([store.path("x" * 300, "m", "l2")])
    store.check([store.path("toy", "m", "l2")], per_layer=True)
    assert not os.path.exists(store.folder)  # nothing written


def test_store_runs_a_set_and_resumes_it(tmp_path):
    toy, store = _toy(tmp_path), results.Store(str(tmp_path / "out"))
    path = store.path(toy.name, "m", "l2")
    labels, order = results.labels_of(toy.pairs), [(d, r) for r, d, _ in toy.pairs]
    store.check([path])
    os.makedirs(store.folder)
    for run, pairs in enumerate((order[:2], order)):  # a run cut short after two pairs, then the whole
        with store.lock([path]):
            held, record = _prepare(store, toy, path)
            with _closing(store.writer({0: path}, held={0: held})) as rows:
                for dis, ref in pairs:
                    rows.write(0, dis, ref, labels[(dis, ref)], (0.1 * len(dis + ref),))
            done = store.finish(path, labels, order)
            store.summarise([{**record, "n": len(done), "file": path, "run_id": str(run)}])
    assert [r[0] for r in done] == ["a.png", "b.png", "c.png"] and held == {("a.png", "r.png"), ("b.png", "r.png")}
    assert [(r["n"], r["run_id"]) for r in csv.DictReader(open(tmp_path / "out" / "summary.csv"))] == \
        [("2", "0"), ("3", "1")]
