"""The project's layering, read from the source with an AST pass (nothing is imported):

- no import cycles in scratch_nn, torch_impl and experiments (imports inside functions count:
  a lazy import hides a cycle, it does not remove it);
- no module imports a `_private` name of another project module (`from m import _x`, or
  `m._x` on an imported project module);
- the entry points are exactly the modules directly under experiments/ (cli.py, their shared
  leaf, aside); each has main(argv=None) and does nothing at import; no entry point imports
  another, and no library module imports an entry point;
- scratch_nn never imports torch, torchvision, torch_impl or experiments.

The checks run on the real tree and, so that they are known to catch what they claim, on small
planted trees that break each rule.
"""
import ast
import os
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("scratch_nn", "torch_impl", "experiments")
ENTRY_PACKAGE = "experiments"
ENTRY_EXEMPT = {"experiments", "experiments.cli"}      # the package itself and the entry points' shared leaf
FORBIDDEN_IN_SCRATCH = ("torch", "torchvision", "torch_impl", "experiments")
# what an entry point's module-level constants may call: building values, never doing work
CONSTANT_CALLS = {"dict", "tuple", "list", "set", "frozenset", "range", "sorted", "os.path.join"}


def project_modules(root, packages=PACKAGES):
    """{dotted module name: file path} of every .py file under each package."""
    mods = {}
    for pkg in packages:
        for d, dirs, files in os.walk(os.path.join(root, pkg)):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for f in sorted(files):
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    mods[".".join(rel)] = os.path.join(d, f)
    return mods


def _is_package(path):
    return os.path.basename(path) == "__init__.py"


class Import:
    """One import in a module: the project module it reaches, the names it takes, its line."""

    def __init__(self, target, names, line, external=None):
        self.target, self.names, self.line, self.external = target, names, line, external


def imports_of(name, path, mods):
    """Every import statement of one module (function-level ones included), resolved to
    project modules where they point into the project; `external` holds the top-level name
    of the others."""
    tree = ast.parse(open(path).read(), path)
    package = name if _is_package(path) else name.rpartition(".")[0]
    out = []

    def longest(dotted):
        parts = dotted.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in mods:
                return ".".join(parts[:k])
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append(Import(longest(a.name), [], node.lineno, external=a.name.split(".")[0]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in mods:              # `from pkg import submodule`
                    out.append(Import(sub, [], node.lineno))
                else:
                    out.append(Import(longest(mod), [a.name], node.lineno, external=mod.split(".")[0]))
    return tree, out


def graph(mods):
    return {m: sorted({i.target for i in imports_of(m, p, mods)[1] if i.target and i.target != m})
            for m, p in mods.items()}


def cycles(g):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def private_imports(mods):
    """'module:line name' for every _private name taken from another project module."""
    bad = []
    for m, p in mods.items():
        tree, imps = imports_of(m, p, mods)
        for i in imps:
            if i.target and i.target != m:
                bad += [f"{m}:{i.line} {n} from {i.target}" for n in i.names
                        if n.startswith("_") and not n.startswith("__")]
        # `mod._x` where mod is a name bound to a project module by `import` / `from pkg import mod`
        bound = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname and a.name in mods:
                        bound[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    for i in imps:
                        if i.line == node.lineno and i.target and i.target.endswith("." + a.name) and not i.names:
                            bound[a.asname or a.name] = i.target
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__") and bound[node.value.id] != m):
                bad.append(f"{m}:{node.lineno} {node.attr} of {bound[node.value.id]}")
    return bad


def entry_points(mods, package=ENTRY_PACKAGE):
    return sorted(m for m in mods if m.count(".") == 1 and m.startswith(package + ".")
                  and not _is_package(mods[m]) and m not in ENTRY_EXEMPT)


def entry_point_problems(mods, package=ENTRY_PACKAGE):
    """An entry point lacking main(argv=None) or running code at import (anything at module
    level but imports, definitions, constants and the __main__ guard)."""
    bad = []
    for m in entry_points(mods, package):
        tree = ast.parse(open(mods[m]).read())
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        if not mains or [a.arg for a in mains[0].args.args] != ["argv"] or \
                not (mains[0].args.defaults and isinstance(mains[0].args.defaults[0], ast.Constant)
                     and mains[0].args.defaults[0].value is None):
            bad.append(f"{m}: no main(argv=None)")
        for n in tree.body:
            quiet = isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign,
                                   ast.AnnAssign)) or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
            guard = (isinstance(n, ast.If) and isinstance(n.test, ast.Compare) and isinstance(n.test.left, ast.Name)
                     and n.test.left.id == "__name__")
            if isinstance(n, (ast.Assign, ast.AnnAssign)):   # constants: calls of constructors only
                quiet = all(ast.unparse(c.func) in CONSTANT_CALLS for c in ast.walk(n) if isinstance(c, ast.Call))
            if not (quiet or guard):
                bad.append(f"{m}:{n.lineno} runs at import: {ast.unparse(n).splitlines()[0]}")
    return bad


def entry_point_imports(mods, package=ENTRY_PACKAGE):
    """'importer -> entry point' for every import of an entry point by another module."""
    eps = set(entry_points(mods, package))
    g = graph(mods)
    return [f"{m} -> {t}" for m, ts in g.items() for t in ts if t in eps]


def scratch_imports_forbidden(mods):
    bad = []
    for m, p in mods.items():
        if m == "scratch_nn" or m.startswith("scratch_nn."):
            for i in imports_of(m, p, mods)[1]:
                top = (i.target or "").split(".")[0] or i.external
                if top in FORBIDDEN_IN_SCRATCH:
                    bad.append(f"{m}:{i.line} imports {top}")
    return bad


# ------------------------------------------------------------------------------ the real tree
MODS = project_modules(ROOT)


def test_the_tree_is_read():
    assert {"scratch_nn.backends.cupy_backend", "experiments.train.trainer", "experiments.run"} <= set(MODS)
    assert len(MODS) > 60


def test_no_import_cycles():
    assert cycles(graph(MODS)) == []


def test_no_private_names_cross_modules():
    assert private_imports(MODS) == []


def test_entry_points_are_thin_and_named():
    assert entry_points(MODS) == sorted(f"experiments.{n}" for n in (
        "run", "bench", "scaling", "dp_scaling", "study", "compare", "infer_bench", "plots", "gpu_profile",
        "cpu_profile"))
    assert entry_point_problems(MODS) == []


def test_nothing_imports_an_entry_point():
    assert entry_point_imports(MODS) == []


def test_scratch_nn_stands_alone():
    assert scratch_imports_forbidden(MODS) == []


# ------------------------------------------------------------------------------ planted trees
def _plant(tmp_path, files):
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return project_modules(str(tmp_path), ("scratch_nn", "experiments"))


BASE = {"scratch_nn/__init__.py": "from . import core\n", "scratch_nn/core.py": "import numpy\n",
        "experiments/__init__.py": "", "experiments/cli.py": "class UsageError(Exception):\n    pass\n",
        "experiments/lib/__init__.py": "",
        "experiments/lib/a.py": "def f():\n    return 1\n",
        "experiments/tool.py": '"""A tool."""\nimport sys\n\nfrom .lib import a\n\n\ndef main(argv=None):\n'
                               '    return a.f()\n\n\nif __name__ == "__main__":\n    sys.exit(main())\n'}


def test_a_clean_planted_tree_passes(tmp_path):
    mods = _plant(tmp_path, BASE)
    assert cycles(graph(mods)) == [] and private_imports(mods) == [] and entry_point_problems(mods) == []
    assert entry_point_imports(mods) == [] and scratch_imports_forbidden(mods) == []


def test_a_planted_cycle_is_found_even_through_a_lazy_import(tmp_path):
    mods = _plant(tmp_path, dict(BASE, **{
        "experiments/lib/a.py": "from .b import g\n\n\ndef f():\n    return g()\n",
        "experiments/lib/b.py": "def g():\n    from . import a\n    return a\n"}))
    assert cycles(graph(mods)) == [["experiments.lib.a", "experiments.lib.b"]]


def test_a_planted_private_import_is_found(tmp_path):
    mods = _plant(tmp_path, dict(BASE, **{
        "experiments/lib/b.py": "from .a import _hidden\nfrom . import a as mod\n\nx = mod._other\n"}))
    bad = private_imports(mods)
    assert len(bad) == 2 and "_hidden from experiments.lib.a" in bad[0] and "_other of experiments.lib.a" in bad[1]


def test_planted_entry_point_breaches_are_found(tmp_path):
    mods = _plant(tmp_path, dict(BASE, **{
        "experiments/other.py": "import sys\nfrom . import tool\n\nprint(sys.argv)\nN = len(sys.argv)\n\n\n"
                                "def main(argv):\n    pass\n",
        "experiments/lib/c.py": "from ..tool import main\n"}))
    assert sorted(entry_point_imports(mods)) == ["experiments.lib.c -> experiments.tool",
                                                 "experiments.other -> experiments.tool"]
    problems = entry_point_problems(mods)
    assert [p.split(" ", 1)[1] for p in problems] == ["no main(argv=None)", "runs at import: print(sys.argv)",
                                                       "runs at import: N = len(sys.argv)"]


def test_scratch_nn_importing_torch_or_experiments_is_found(tmp_path):
    mods = _plant(tmp_path, dict(BASE, **{"scratch_nn/core.py": "def f():\n    import torch\n    from experiments "
                                                                 "import cli\n"}))
    assert [b.split()[-1] for b in scratch_imports_forbidden(mods)] == ["torch", "experiments"]


@pytest.mark.parametrize("level_source,expected", [("from . import a", "experiments.lib.a"),
                                                   ("from .. import cli", "experiments.cli"),
                                                   ("from ..lib.a import f", "experiments.lib.a")])
def test_relative_imports_resolve(tmp_path, level_source, expected):
    mods = _plant(tmp_path, dict(BASE, **{"experiments/lib/d.py": level_source + "\n"}))
    assert graph(mods)["experiments.lib.d"] == [expected]
