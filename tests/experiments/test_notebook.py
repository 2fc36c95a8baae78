"""notebooks/kaggle_t4.ipynb is a valid notebook, and every command it runs exists with those
flags: each run_module(...) call's arguments are evaluated with the notebook's settings and
given to that module's own argument parser. And the notebook runs: executed end to end with
nbclient in a kernel of this interpreter, its settings cell overridden (this checkout, the CI
CIFAR-10 subset, nothing installed or downloaded, a few rows under 2-second budgets), with no
cell raising; where there is no GPU, the GPU rows are recorded as skipped and the GPU-only
steps say why they skip.

On a GPU machine (the H200 run of issue 20), the same test:

    CIFAR10_SUBSET_DIR=$PWD/.data/cifar10-5k NOTEBOOK_EXECUTED=$OUT/kaggle_t4.executed.ipynb \\
        python3 -m pytest -q -s tests/experiments/test_notebook.py

NOTEBOOK_ONLY overrides the study rows it runs (default cnn/1-core/*,cnn/gpu/*);
NOTEBOOK_EXECUTED, if set, is where the executed notebook (every cell's output) is written.
"""
import ast
import csv
import json
import os
import re
import shutil
import sys
import time

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


# The settings cell's values in the executed copy: the smallest run that still goes through every
# step. The seed preset takes the data as it is (quick asks for 10,000 training images; the CI
# subset has 5,000); one seed; the budgets stop each training row after 2 s of steady-state training.
def _overrides(tmp_path, data_dir):
    return dict(
        PRESET="seed", ONLY=os.environ.get("NOTEBOOK_ONLY", "cnn/1-core/*,cnn/gpu/*"),
        STUDY_FLAGS=["--seed", "0", "--cpu-budget", "2", "--gpu-budget", "2", "--test-subset", "200"],
        REPO_URL="", WORK=ROOT, DATA_DIR=data_dir, OUT=str(tmp_path / "results"),
        INSTALL=False, DOWNLOAD=False,
        INFER_BATCH_SIZES="8", INFER_MAX_TIME=0.2,
        INFER_FLAGS=["--models", "cnn", "--backends", "numpy,cupy", "--engines", "eager", "--precisions", "fp32",
                     "--warmup", "1", "--iters", "3"],
        DP_TRAIN_SUBSET=512)


def _override_settings(source, values):
    """The settings cell with the given names' values replaced (each must be a setting there)."""
    lines = source.splitlines()
    seen = set()
    for stmt in ast.parse(source).body:
        name = stmt.targets[0].id
        if name in values:
            assert stmt.lineno == stmt.end_lineno, f"setting {name} spans lines"
            lines[stmt.lineno - 1] = f"{name} = {values[name]!r}"
            seen.add(name)
    missing = sorted(set(values) - seen)
    assert not missing, f"the settings cell has no {', '.join(missing)}"
    return "\n".join(lines) + "\n"


def _stream_text(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CIFAR10_SUBSET_DIR"), reason="needs the 5,000/1,000 CIFAR-10 subset "
                    "that .ci/run builds (CIFAR10_SUBSET_DIR)")
def test_the_notebook_runs_end_to_end(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    values = _overrides(tmp_path, os.environ["CIFAR10_SUBSET_DIR"])
    code[0].source = _override_settings(code[0].source, values)
    # first, a cell of the test's own: which interpreter the kernel is
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))

    # a kernel of this very interpreter (its packages, the project installed in it), with its
    # Jupyter and IPython state in tmp_path: no user profile or kernelspec takes part
    for var, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"), ("JUPYTER_CONFIG_DIR", "config")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    spec = tmp_path / "kernels" / "this-python"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "the test's interpreter", "language": "python"}))
    km = KernelManager(kernel_name="this-python",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
    client = nbclient.NotebookClient(nb, km=km, timeout=600, startup_timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    # ipykernel leaves the subprocesses' output (the study's, the benchmark's) out of the cells under
    # pytest (it looks for PYTEST_CURRENT_TEST): without it, the cells hold it as on Kaggle
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    t0 = time.perf_counter()
    try:
        client.execute(env=env)     # raises CellExecutionError on the first cell that raises
    finally:
        if km.has_kernel:       # nbclient leaves a kernel manager it was given running
            km.shutdown_kernel()
        out = os.environ.get("NOTEBOOK_EXECUTED")
        if out:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            nbformat.write(nb, out)
        for i, c in enumerate(c for c in nb.cells if c.cell_type == "code"):
            print(f"--- code cell {i} ---\n{_stream_text(c)}", end="")
    print(f"--- executed in {time.perf_counter() - t0:.1f} s")

    texts = [_stream_text(c) for c in nb.cells if c.cell_type == "code"]
    assert texts[0].strip() in (sys.executable, os.path.realpath(sys.executable)), texts[0]
    everything = "".join(texts)
    assert "INSTALL = False: nothing installed" in everything
    if shutil.which("nvidia-smi") is None:
        assert "No GPU here" in everything
    n_gpus = re.search(r"\| GPUs: (\d+)", everything)
    assert n_gpus, "section 2 prints the GPUs CuPy sees"
    if int(n_gpus.group(1)) < 2:     # the data-parallel section needs two
        assert "Skipping this section." in everything

    study = os.path.join(values["OUT"], f"study-{values['PRESET']}-t4")
    rows = _read_csv(os.path.join(study, "study.csv"))
    ids = {r["row"] for r in rows}      # cnn/1-core/scratch, or with its seed: cnn/1-core/scratch/s0
    for want in ("cnn/1-core/scratch", "cnn/1-core/torch"):
        assert any(i == want or i.startswith(want + "/s") for i in ids), (want, sorted(ids))
    for r in rows:      # every row ok; a GPU row may be skipped where there is no GPU, and says so
        skipped_for_no_gpu = "/gpu/" in r["row"] and r["status"] == "skipped" and "no GPU" in r["reason"]
        assert r["status"] == "ok" or skipped_for_no_gpu, (r["row"], r["status"], r["reason"])
    assert os.path.isfile(os.path.join(study, "compare", "main.md"))
    infer = _read_csv(os.path.join(values["OUT"], "infer", "infer.csv"))
    assert infer and not [r for r in infer if r["status"] == "failed"], infer
    assert any(r["status"] == "ok" and r["impl"] == "scratch" for r in infer)
