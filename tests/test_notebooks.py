"""Every notebook runs top to bottom headless (nbclient), on its tiny configs, and draws its plots.

The fast checks read the notebooks only: the expected ones are there, they are stored without
outputs (executed outputs embed images; the repository stays small) and they parse. The `slow`
ones execute each notebook in a fresh kernel: any cell that raises fails the test, and so does a
notebook that shows no figure.
"""

import json
import pathlib
import time

import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ("quickstart.ipynb", "index_ablation.ipynb", "joint_vs_separate.ipynb",
            "test_time_training.ipynb")
MAX_STORED_BYTES = 100_000  # an output-free notebook is a few KB


def test_the_expected_notebooks_are_there():
  assert set(EXPECTED) <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
  nb = json.loads(path.read_text())
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code, f"{path.name} has no code cell"
  assert all(not c.get("outputs") for c in code), f"{path.name}: clear the outputs before committing"
  assert path.stat().st_size < MAX_STORED_BYTES


def _figures(cells) -> int:
  return sum("image/png" in o.get("data", {}) for c in cells if c.cell_type == "code"
             for o in c.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  nb = nbformat.read(str(path), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(path.parent)}})
  start = time.time()
  client.execute()  # raises CellExecutionError naming the failing cell
  print(f"{path.name}: executed in {time.time() - start:.0f} s")
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
  assert _figures(nb.cells) > 0, f"{path.name} executed but showed no figure"
