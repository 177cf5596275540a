"""Execute one notebook with a real Jupyter kernel, papermill-style parameters injected (run by the notebooks' venv).

    python tests/notebook_runner.py IN.ipynb OUT.ipynb PARAMS.json

The cell tagged `parameters` keeps its defaults; a cell tagged `injected-parameters` right after it assigns each
key of PARAMS.json (a JSON object) as a Python literal, as papermill does. Every cell runs in order in the kernel
of this interpreter (nbclient, `python3`), from the notebook's own folder. OUT.ipynb is written with the outputs
even when a cell fails; the exit code is then 1 and the last line of stderr names the failing cell.
"""

import json
import sys
import time
from pathlib import Path

import nbformat

CELL_TIMEOUT_S = 900


def inject(notebook: nbformat.NotebookNode, params: dict) -> None:
    """Insert the parameter overrides after the cell tagged `parameters` (which must exist)."""
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise SystemExit(f"error: {len(tagged)} cells tagged 'parameters' (want exactly 1)")
    source = "# Parameters injected by tests/notebook_runner.py\n" + "".join(
        f"{name} = {value!r}\n" for name, value in params.items()
    )
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(tagged[0] + 1, cell)


def main(source: str, target: str, params_path: str) -> int:
    from nbclient import NotebookClient  # the kernel's side only (the tests import `inject` without it)
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(source, as_version=4)
    inject(notebook, json.loads(Path(params_path).read_text()))
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(Path(source).parent.absolute())}},
    )
    start = time.monotonic()
    try:
        client.execute()
        failed = None
    except CellExecutionError as error:
        failed = error
    nbformat.write(notebook, target)
    seconds = time.monotonic() - start
    if failed is not None:
        print(str(failed), file=sys.stderr)
        last = str(failed).strip().splitlines()[-1] if str(failed).strip() else type(failed).__name__
        print(f"error: {Path(source).name} failed after {seconds:.0f} s: {last}", file=sys.stderr)
        return 1
    print(f"{Path(source).name}: {len(notebook.cells)} cells in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
