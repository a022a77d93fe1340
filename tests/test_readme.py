"""The README and docs stay true: the accuracy table holds the published figures (SUMMARY.md)
digit for digit, every command shown parses with the flags the commands have today, every link
leads somewhere, the README stays a front door (≤ 16 KB), and nothing in the code or docs cites
a file outside the repository."""
import argparse
import re
import shlex

import pytest

from helpers import REFERENCE, ROOT
from zsiqa import cli

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {"run.py": "eval", "run_single_img.py": "score", "calc_scores.py": "corr", "bench.py": "bench"}


def _summary_rows():
    text = (REFERENCE / "SUMMARY.md").read_text()
    clean, robust = text.split("## Robustness")
    rows = {}
    for part, key in ((clean, "clean"), (robust, "robust")):
        for line in part.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and cells[0] not in ("method",) and not cells[0].startswith("---"):
                rows.setdefault(cells[0], {})[key] = cells[1:]
    return rows


@pytest.mark.golden
def test_accuracy_table_matches_summary():
    rows = _summary_rows()
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Reproducing the paper"):readme.index("Each row is reproduced")]
    checked = 0
    for line in table.splitlines():
        m = re.match(r"\| `([a-z0-9_]+)` \| ([a-z0-9]+) \| (.*) \|$", line)
        if not m:
            continue
        method, cells = f"{m.group(1)}_{m.group(2)}", [c.strip() for c in m.group(3).split("|")]
        want = rows[method]
        for got, src in zip(cells[:3], want["clean"][:3]):
            assert got == ("—" if src == "—" else " / ".join(src.split(" / ")[:2])), (method, got, src)
        assert cells[3] == want["robust"][0], method
        checked += 1
    assert checked >= 29


def _code_lines(text):
    """The lines of a document's shell code blocks (``` or ```bash; python blocks left out),
    continuation lines joined."""
    lines, language = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            language = None if language is not None else (line[3:].strip() or "sh")
        elif language in ("sh", "bash"):
            lines.append(line)
    return "\n".join(lines).replace("\\\n", " ").splitlines()


def _commands():
    """(file, words) of every command shown in the README and the docs: their shell blocks' lines
    and inline code that starts like a command."""
    found = []
    for path in DOCS:
        text = path.read_text()
        inline = re.findall(r"`((?:zsiqa|python|\.venv/bin/python|torchrun) [^`]* -[^`]+)`", text)  # with flags
        for line in _code_lines(text) + inline:
            for part in re.split(r"&&|;", line.split(" #")[0]):
                text = part.replace("[", "").replace("]", "")
                try:
                    words = shlex.split(text)
                except ValueError:  # output shown in a block, not a command
                    words = text.split()
                if words:
                    found.append((path.name, words))
    return found


def _command_of(words):
    words = [w for w in words if not re.fullmatch(r"[A-Z_]+=\S*", w)]  # VAR=value prefixes
    for k, w in enumerate(words):
        name = w.rsplit("/", 1)[-1]
        if name == "zsiqa" and k + 1 < len(words):
            return words[k + 1], words[k + 2:]
        if name == "-m" and words[k + 1:k + 2] == ["zsiqa"]:
            return words[k + 2], words[k + 3:]
        if name in SCRIPTS:
            return SCRIPTS[name], words[k + 1:]
    return None, None


def test_every_command_shown_parses():
    shown = 0
    for name, words in _commands():
        command, argv = _command_of(words)
        if command is None or command.isupper():  # not a zsiqa command, or `zsiqa COMMAND` in prose
            continue
        assert command in cli.COMMANDS, (name, words)
        argv = ["300" if a in ("N", "K") else a for a in argv if a not in ("...", "…")]  # a synopsis's placeholders
        parser = cli.build_parser(command)
        parser.error = lambda message, words=words, name=name: pytest.fail(f"{name}: {' '.join(words)}: {message}")
        try:
            parser.parse_args(argv)
        except argparse.ArgumentTypeError as e:  # pragma: no cover - parse_args reports through error()
            pytest.fail(f"{name}: {' '.join(words)}: {e}")
        shown += 1
    assert shown >= 30, shown


def test_links_lead_somewhere():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text()):
            if not target.startswith("http"):
                assert (path.parent / target).exists(), (path.name, target)


def test_docs_named_in_the_code_exist():
    named = {m for p in sorted((ROOT / "zsiqa").rglob("*.py")) for m in re.findall(r"docs/[\w-]+\.md", p.read_text())}
    assert named and [m for m in named if not (ROOT / m).is_file()] == []


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode("utf-8")) <= 16000
    order = ["## Install", "## The one command", "## Python API", "## The commands in brief",
             "## Backbones and distances", "## Reproducing the paper", "## More"]
    assert [text.index(h) for h in order] == sorted(text.index(h) for h in order)


def test_nothing_cites_a_file_outside_the_repository():
    """Docs, code, examples and benchmarks name no file of the spec folder or of the machine they
    were written on (a user has neither): a stand-in checkpoint, a /tmp path, the spec's files."""
    places = [*DOCS, *(p for d in ("zsiqa", "examples", "benchmarks") for p in sorted((ROOT / d).rglob("*.py"))),
              *sorted(ROOT.glob("*.py"))]
    outside = r"PROTOCOL\.md|\.\./shared|SUMMARY\.md|reference_results|/tmp/|_seed0\."
    cited = [(p.name, m) for p in places for m in re.findall(outside, p.read_text())]
    assert not cited, cited
