"""notebooks/quickstart.ipynb runs top to bottom on the CPU with the bundled data (nbclient)."""

import os

import pytest

from .conftest import ROOT

NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="executing the notebook needs nbformat (the [test] extra)")
    nbclient = pytest.importorskip("nbclient", reason="executing the notebook needs nbclient (the [test] extra)")
    pytest.importorskip("ipykernel", reason="executing the notebook needs ipykernel (the [test] extra)")
    monkeypatch.delenv("CHEXCAM_WEIGHTS", raising=False)
    monkeypatch.setenv("CHEXCAM_CACHE_DIR", str(tmp_path / "cache"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
    client.execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "maps (3, 14, 224, 224)" in outputs
    assert '"Cardiomegaly"' in outputs
    assert "Explainer (predictor)" in outputs and "explain (dynamic graph)" in outputs
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
