"""The notebooks: each executed end to end by a real Jupyter kernel under Python 3.12 with the newest JAX (what
Colab runs), with its CI parameters (tiny offline stand-ins for what it downloads), then what it produced is
checked; and the rules every notebook keeps (badge, setup and parameters cells, stripped outputs, public API).

The notebooks' environment is a venv of Python 3.12 at `.venv-notebooks/` (built on first use, rebuilt when
setup.py changes): set SLAM_JAX_NOTEBOOK_PYTHON to a Python 3.12 interpreter where none is on PATH or in pyenv.
"""

import ast
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import notebook_runner
import pytest
from notebook_checks import CHECKS, RUNS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("quickstart", "tokenize", "pretrain_tpu", "dpo", "generate_and_listen", "evaluate", "new_voice")
VENV = ROOT / ".venv-notebooks"
NOTEBOOK_PYTHON = "3.12"
BADGE = "https://colab.research.google.com/github/slam-jax/slam_jax/blob/main/notebooks/{name}.ipynb"
RUN_TIMEOUT_S = 900


def load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def code_cells(notebook: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def python_of(source: str) -> str:
    """A cell's Python: IPython's `!command` and `%magic` lines become `pass`."""
    return "\n".join(
        re.sub(r"^(\s*)[!%].*$", r"\1pass", line) if line.lstrip()[:1] in ("!", "%") else line
        for line in source.splitlines()
    )


def python_version(executable: str | Path) -> str:
    """'3.12' for a Python 3.12 interpreter; '' where `executable` does not run."""
    probe = [str(executable), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
    run = subprocess.run(probe, capture_output=True, text=True)
    return run.stdout.strip() if run.returncode == 0 else ""


def find_python() -> str:
    """A Python 3.12 interpreter: SLAM_JAX_NOTEBOOK_PYTHON, python3.12 on PATH, or pyenv's."""
    found = [os.environ.get("SLAM_JAX_NOTEBOOK_PYTHON"), shutil.which(f"python{NOTEBOOK_PYTHON}")]
    found += sorted(glob.glob(str(Path.home() / f".pyenv/versions/{NOTEBOOK_PYTHON}.*/bin/python")))
    for candidate in filter(None, found):
        if python_version(candidate) == NOTEBOOK_PYTHON:
            return candidate
    raise RuntimeError(
        f"no Python {NOTEBOOK_PYTHON} found for the notebooks (Colab's version): set SLAM_JAX_NOTEBOOK_PYTHON"
    )


@pytest.fixture(scope="session")
def notebook_python() -> Path:
    """`.venv-notebooks/bin/python`: Python 3.12, slam_jax (editable) with the newest JAX pip gives, a kernel."""
    stamp = hashlib.sha256((ROOT / "setup.py").read_bytes()).hexdigest()
    with open(ROOT / ".venv-notebooks.lock", "w") as lock:  # pytest-xdist workers build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (VENV / "stamp").is_file() or (VENV / "stamp").read_text() != stamp:
            shutil.rmtree(VENV, ignore_errors=True)
            subprocess.run([find_python(), "-m", "venv", str(VENV)], check=True)
            pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
            subprocess.run([*pip, "--upgrade", "pip"], check=True)
            subprocess.run([*pip, "-e", f"{ROOT}[notebooks]"], check=True)
            (VENV / "stamp").write_text(stamp)
    python = VENV / "bin" / "python"
    assert python_version(python) == NOTEBOOK_PYTHON, f"{VENV}: not Python {NOTEBOOK_PYTHON} (delete it to rebuild)"
    return python


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory) -> dict[str, str]:
    import notebook_stand_ins

    return notebook_stand_ins.build(tmp_path_factory.mktemp("stand_ins"))


@pytest.mark.parametrize("run_id", RUNS)
def test_the_notebook_runs_end_to_end_on_colabs_python_and_makes_what_it_shows(
    run_id, notebook_python, stand_ins, tmp_path
):
    name, ci_params = RUNS[run_id]
    workdir = tmp_path / "work"
    params = ci_params(workdir, stand_ins)
    assert params["WORKDIR"] == str(workdir)
    (tmp_path / "params.json").write_text(json.dumps(params))
    env = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "PYTHONPATH")}
    # as in an activated venv (and on Colab): `python` in the notebooks' commands is the kernel's interpreter
    env.update(JAX_PLATFORMS="cpu", MPLBACKEND="agg", PATH=f"{notebook_python.parent}{os.pathsep}{env['PATH']}")
    executed = tmp_path / f"{name}.ipynb"
    argv = [str(notebook_python), str(ROOT / "tests" / "notebook_runner.py")]
    argv += [str(ROOT / "notebooks" / f"{name}.ipynb"), str(executed), str(tmp_path / "params.json")]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S, cwd=ROOT)
    assert run.returncode == 0, f"{name}.ipynb failed:\n{run.stderr[-6000:]}"
    ran = nbformat.read(executed, as_version=4)
    errors = [out for cell in ran.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
    CHECKS[name](workdir)


def test_every_notebook_is_listed_and_tested():
    on_disk = sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb"))
    assert on_disk == sorted(NOTEBOOKS)
    assert set(CHECKS) == set(NOTEBOOKS) == {name for name, _ in RUNS.values()}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_notebook_opens_in_colab_sets_up_takes_parameters_and_is_stored_without_outputs(name):
    notebook = load(name)
    nbformat.validate(notebook)
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert BADGE.format(name=name) in first.source
    assert "Needs" in first.source  # runtime, downloads and time
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"
    cells = code_cells(notebook)
    assert cells[0] == code_cells(load("quickstart"))[0], f"{name}: its setup cell differs from quickstart's"
    assert '"git", "clone"' in cells[0] and '"pip", "install"' in cells[0] and "def sh(" in cells[0]
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].source == cells[1], f"{name}: the second code cell holds the parameters"
    for statement in ast.parse(tagged[0].source).body:
        assert isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant), ast.unparse(statement)
    assert "WORKDIR" in tagged[0].source
    assert "jax.devices()" in cells[2], f"{name}: the third code cell detects the runtime"
    assert "summary.json" in cells[-1]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_notebook_uses_only_documented_commands_and_public_api(name):
    source = "\n".join(python_of(cell) for cell in code_cells(load(name)))
    tree = ast.parse(source)  # every cell is Python (or an IPython ! / % line)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert not any(part.startswith("_") for part in node.module.split(".")), node.module
            assert not any(alias.name.startswith("_") for alias in node.names), ast.unparse(node)
        if isinstance(node, ast.Import):
            assert not any(part.startswith("_") for alias in node.names for part in alias.name.split("."))
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            raise AssertionError(f"{name}: private attribute {ast.unparse(node)}")
    readme = (ROOT / "README.md").read_text()
    raw = "\n".join(code_cells(load(name)))
    for config in re.findall(r"configs/\w+\.py", raw):
        assert (ROOT / config).is_file(), config
    for module in re.findall(r"-m ((?:slam_jax|conversion)[\w.]*)", raw):
        assert f"python -m {module}" in readme, f"{name}: `python -m {module}` is not documented in README.md"


def test_readme_lists_every_notebook_with_its_badge_and_needs():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Notebooks") :]
    for name in NOTEBOOKS:
        assert BADGE.format(name=name) in section and f"notebooks/{name}.ipynb" in section, name


def test_the_runner_injects_parameters_after_the_parameters_cell():
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("A = 1"),
        nbformat.v4.new_code_cell("B = 'x'\nC = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(B)"),
    ]
    notebook_runner.inject(notebook, {"B": "/tmp/y", "C": 3})
    assert [cell.source.splitlines()[-2:] for cell in notebook.cells][2] == ["B = '/tmp/y'", "C = 3"]
    assert notebook.cells[2].metadata["tags"] == ["injected-parameters"]
    namespace = {}
    for cell in notebook.cells[:3]:
        exec(cell.source, namespace)
    assert (namespace["B"], namespace["C"]) == ("/tmp/y", 3)
