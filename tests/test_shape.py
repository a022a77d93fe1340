"""The code's shape as a habit, checked on the source: short functions (ruff checks line length
and complexity, not a function's length), imports that name the package and run one way
(commands → evaluation → scorer → backbones → protocol, no cycle even through imports inside
functions), lazy imports only for heavy or optional third-party modules (and in the CLI's
entry points), and no private member reached across modules."""
import ast
import re

from helpers import ROOT

MAX_LINES = 60
PACKAGE = ROOT / "zsiqa"
# each module's layer; a module imports only from its own layer or below
LAYERS = [
    ("errors", "escaping", "options", "jsontext", "windows", "images", "fused", "distances", "blocks"),     # protocol
    ("torchscript", "keymaps", "weights", "families", "registry", "extractor", "models"),       # backbones
    ("core", "loading", "engine", "maps", "scorer", "loss", "metric", "torchmetric", "baselines"),  # scoring
    ("robustness", "pairing", "datasets", "results", "stats", "metric_compare", "plots", "report",
     "distributed", "config", "planning", "comparison", "bundled", "metric_report"),  # evaluation
    ("evaluate", "correlate", "benchmark", "exits", "cli", "__main__", "__init__"),                  # commands
]
LAYER = {m: k for k, group in enumerate(LAYERS) for m in group}
# the results store's modules (zsiqa/store/, named store.<module>; its entry point is results): evaluation
STORE = ("store", "store.summaries", "store.resume", "store.rows", "store.tables", "store.records", "store.naming",
         "store.csvfiles", "store.locks")
LAYER.update(dict.fromkeys(STORE, LAYER["results"]))
# third-party modules imported inside functions: heavy (timm 1.5 s, scipy.stats, matplotlib, pandas,
# clip's pkg_resources) or optional (huggingface_hub, triton, torchmetrics)
LAZY_OK = {"timm", "clip", "matplotlib", "scipy", "pandas", "huggingface_hub", "triton", "torchmetrics"}


def _files():
    """{module name: file} of the package: zsiqa/store/'s as store.<name> (its __init__.py: store)."""
    found = {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}
    for p in sorted(PACKAGE.glob("store/*.py")):
        found["store" if p.stem == "__init__" else f"store.{p.stem}"] = p
    return found


def _modules():
    return {name: ast.parse(p.read_text()) for name, p in _files().items()}


def _module_of(target):
    """The module name (as `_files` names it) of an imported first-party module zsiqa.<...>."""
    name = target.split(".", 1)[1]
    return name if name in LAYER else name.split(".")[0]


def _imports(tree):
    """(first-party module or None, imported module name, inside a function, node) of every import."""
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in inside, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import at line {node.lineno}"
            if node.module == "zsiqa":  # from zsiqa import results, plots: modules
                out += [(f"zsiqa.{a.name}", id(node) in inside, node) for a in node.names]
            else:
                out.append((node.module, id(node) in inside, node))
    return out


def test_no_function_over_60_lines():
    long = []
    for path in sorted(ROOT.glob("*.py")) + list(_files().values()) + sorted(ROOT.glob("examples/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            is_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if is_function and node.end_lineno - node.lineno + 1 > MAX_LINES:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_no_library_module_at_the_top_level():
    scripts = sorted(p.name for p in ROOT.glob("*.py"))
    assert scripts == ["bench.py", "calc_scores.py", "run.py", "run_single_img.py"]
    for name in scripts:  # a few lines calling the package's command line
        lines = [x for x in (ROOT / name).read_text().splitlines() if x.strip()]
        assert len(lines) <= 8 and "from zsiqa.cli import script" in lines, name


def test_imports_run_one_way_without_cycles():
    modules = _modules()
    assert set(modules) == set(LAYER), set(modules) ^ set(LAYER)
    graph, wrong = {m: set() for m in modules}, []
    for name, tree in modules.items():
        for target, _, node in _imports(tree):
            if target.split(".")[0] in {"utils", "engine", "models", "results", "datasets", "layers", "methods"}:
                wrong.append(f"{name}:{node.lineno} imports {target} without the package name")
            if not target.startswith("zsiqa."):
                continue
            dep = _module_of(target)
            graph[name].add(dep)
            if LAYER[dep] > LAYER[name]:
                wrong.append(f"{name} (layer {LAYER[name]}) imports {dep} (layer {LAYER[dep]})")
    assert not wrong, wrong
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in graph[m]:
            assert state.get(d) != "open", f"import cycle: {' → '.join(path + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[m] = "done"
    for m in graph:
        if m not in state:
            visit(m, [m])


def test_imports_inside_functions_only_for_heavy_modules_or_in_the_cli():
    bad = []
    for name, tree in _modules().items():
        for target, inside, node in _imports(tree):
            if inside and name != "cli" and target.split(".")[0] not in LAZY_OK:
                bad.append(f"{name}:{node.lineno} imports {target} inside a function")
    assert not bad, bad


def test_no_private_member_used_across_modules():
    bad = []
    for name, tree in _modules().items():
        aliases = {}
        for _, _, node in _imports(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zsiqa"):
                bad += [f"{name}:{node.lineno} imports {a.name} from {node.module}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
                aliases.update({a.asname or a.name: a.name for a in node.names if node.module == "zsiqa"})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                bad.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not bad, bad


def test_tests_share_one_helpers_module_and_docs_place_every_file():
    """Tests import shared functions from tests/helpers.py (never from conftest.py, which holds the
    fixtures), none defines its own runner of the eval command or its own one-line-error
    assertion, and docs/tests.md's table names every test file."""
    tests = sorted((ROOT / "tests").glob("test_*.py"))
    docs = (ROOT / "docs" / "tests.md").read_text()
    for path in tests:
        text = path.read_text()
        assert not re.search(r"^\s*(from conftest import|import conftest)", text, re.M), path.name
        assert not re.search(r"^def _run\(tiny", text, re.M), f"{path.name}: use helpers.run_tiny"
        assert "len(err.strip().splitlines()) == 1" + ' and "Traceback"' not in text, \
            f"{path.name}: use helpers.fails_one_line"
        assert "e.value.code" + " == 2" not in text, f"{path.name}: use helpers.fails_one_line"
        assert f"`{path.name}`" in docs, f"docs/tests.md does not place {path.name}"


def test_backbone_modules_hold_one_job_each():
    """The backbones layer (registry, families, extractor, weights files, TorchScript reader, key
    mapping, and the models/weights entry points) stays split: each module says its job in a
    docstring and keeps under 500 lines (models.py and weights.py held 577 and 632)."""
    files = _files()
    long = {m: n for m in LAYERS[1] if (n := len(files[m].read_text().splitlines())) > 500}
    assert not long, long
    assert all(ast.get_docstring(ast.parse(files[m].read_text())) for m in LAYERS[1])


def test_no_module_over_500_lines():
    """Each module one job that a reader takes in: none of zsiqa/ (the store included) over 500 lines."""
    long = {p.relative_to(ROOT).as_posix(): n for p in (ROOT / "zsiqa").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
