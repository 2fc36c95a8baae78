"""notebooks/kaggle_t4.ipynb is a valid notebook, and every command it runs exists with those
flags: each run_module(...) call's arguments are evaluated with the notebook's settings and
given to that module's own argument parser."""
import ast
import os

import pytest

from tests.helpers import ROOT

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = os.path.join(ROOT, "notebooks", "kaggle_t4.ipynb")


def _parsers():
    """module -> a function that parses (and, where the CLI does it while parsing, validates)
    an argument list, raising on a flag or value the CLI does not take."""
    from experiments import compare, infer_bench, run, study

    return {"experiments.study": lambda args: study.build_parser().parse_args(args),
            "experiments.run": lambda args: run.build_parser().parse_args(args),
            "experiments.compare": lambda args: compare.build_parser().parse_args(args),
            "experiments.infer_bench": infer_bench.parse_args}


class _Names(dict):
    """The settings cell's values; any other name (set at run time, e.g. a found data folder)
    stands for a path."""

    def __missing__(self, key):
        return f"/placeholder/{key}"


def _code_cells(nb):
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _settings(nb):
    names = _Names()
    for stmt in ast.parse(_code_cells(nb)[0]).body:
        assert isinstance(stmt, ast.Assign), "the first code cell holds plain settings"
        names[stmt.targets[0].id] = ast.literal_eval(stmt.value)
    return names


def _module_calls(nb, names):
    """(module, [str args]) of every run_module call in the notebook, arguments evaluated."""
    calls = []
    for src in _code_cells(nb):
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run_module":
                values = []
                for arg in node.args:
                    expr = arg.value if isinstance(arg, ast.Starred) else arg
                    v = eval(compile(ast.Expression(expr), "<notebook>", "eval"), {}, names)
                    values += list(v) if isinstance(arg, ast.Starred) else [v]
                calls.append((values[0], [str(v) for v in values[1:]]))
    return calls


def test_notebook_is_valid_and_parses():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for src in _code_cells(nb):
        ast.parse(src)      # plain Python: no shell escapes a CLI check would miss


def test_every_command_the_notebook_runs_exists_with_its_flags():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    names = _settings(nb)
    calls = _module_calls(nb, names)
    modules = {m for m, _ in calls}
    assert {"experiments.study", "experiments.infer_bench"} <= modules
    parsers = _parsers()
    for module, args in calls:
        assert module in parsers, f"the notebook runs {module}, which this test does not know"
        try:
            parsers[module](args)
        except SystemExit as e:     # argparse's own exit: a flag the CLI does not have
            pytest.fail(f"python -m {module} {' '.join(args)}: argparse exited ({e})")


def test_the_settings_are_values_the_clis_accept():
    from experiments import study

    names = _settings(nbformat.read(NOTEBOOK, as_version=4))
    assert names["PRESET"] in study.PRESETS
    assert names["GPU_PRECISION"] in ("fp32", "fp16")     # the T4 has no tf32
    parsed = study.build_parser().parse_args(["--preset", names["PRESET"], "--precision", names["GPU_PRECISION"]])
    assert parsed.precision == names["GPU_PRECISION"]
