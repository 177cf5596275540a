"""The package's shape: imports go one way between its parts, with no cycle, and a job loads only what it uses.

Layers, lowest first: `errors`, `tokens`, `files`, `parallel`, `settings`, `progress` (used by everyone) -> `data` and
`models` (independent of each other) -> `speech` (audio -> units: the HuBERT/k-means models, unit files) -> `training`
and `evaluation` (independent of each other) -> the jobs' entry points (`main`, `modes`, `pipeline`, `selfcheck`,
`status`, `demo`). Every import counts, including those deferred inside functions.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "slam_jax"
BASE = {"errors", "tokens", "paths", "files", "parallel", "settings", "progress"}
ENTRY = {"main", "modes", "pipeline", "selfcheck", "status", "demo", "__init__"}
ALLOWED = {
    "errors": set(),
    "tokens": set(),
    "paths": {"errors"},
    "files": {"errors", "paths"},
    "parallel": {"paths"},
    "settings": {"errors", "paths"},
    "progress": set(),
    "data": BASE,
    "models": BASE,
    "speech": BASE | {"data", "models"},
    "training": BASE | {"data", "models", "speech"},
    "evaluation": BASE | {"data", "models", "speech"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, package: str) -> set[str]:
    """The slam_jax modules a module of `package` imports anywhere in its `source`, deferred imports included
    (`from pkg import module` counts as the module)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base)
    return {name for name in found if name == "slam_jax" or name.startswith("slam_jax.")}


def graph() -> dict[str, set[str]]:
    edges = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges[name] = imported_modules(path.read_text(), package)
    return edges


def part(module: str) -> str:
    """The layer a module belongs to: its subpackage, or the top-level module's own name."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def test_imports_go_one_way():
    wrong = []
    for module, imports in graph().items():
        source = part(module)
        if source in ENTRY:
            continue
        assert source in ALLOWED, f"{module}: add its part {source!r} to the layer table"
        for target in imports:
            other = part(target)
            if other != source and other not in ALLOWED[source]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_entry_points_are_not_imported_by_the_layers():
    wrong = [
        f"{module} -> {target}"
        for module, imports in graph().items()
        if part(module) not in ENTRY
        for target in imports
        if part(target) in ENTRY
    ]
    assert not wrong, wrong


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target) :] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_layer_test_sees_deferred_and_relative_imports():
    source = "import numpy\n\ndef f():\n    from slam_jax.training import loop\n    from ..demo import report\n"
    assert imported_modules(source, "slam_jax.data") == {"slam_jax.training.loop", "slam_jax.demo.report"}
    assert part("slam_jax.training.loop") == "training" and part("slam_jax.files") == "files"


def test_a_prepare_job_loads_neither_plots_nor_the_tts(tmp_path):
    """`mode=prepare` on the synthetic corpus: the job runs, and matplotlib / espeak / the TTS never load."""
    heavy = ("matplotlib", "espeakng_loader", "slam_jax.speech.tts", "slam_jax.demo", "slam_jax.training")
    program = (
        "import atexit, runpy, sys\n"
        f"heavy = {heavy!r}\n"
        "atexit.register(lambda: print('LOADED', sorted(m for m in sys.modules if m.startswith(heavy))))\n"
        f"sys.argv = ['slam_jax.main', '--config', {str(ROOT / 'configs/slam.py')!r}, '--config.mode=prepare',\n"
        "    '--config.data.train_path=synthetic', '--config.data.synthetic_files=40',\n"
        f"    '--workdir', {str(tmp_path / 'run')!r}]\n"
        "runpy.run_module('slam_jax.main', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout, result.stdout[-2000:]
    assert "[prepare] train:" in result.stdout and "[prepare] valid:" in result.stdout, result.stdout[-2000:]
