"""examples/quantplay.ipynb runs headless, offline, on the bundled model, and shows what it promises.

The kernel is a child process: it inherits this process's environment, so the test
config's cache (the bundled model already converted there) and a free port for the
page are given to it as variables, for the test's duration only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from quantplay import appserver

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quantplay.ipynb"


def cell_text(cell) -> str:
    """Everything a cell printed or displayed as text."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def cell_with(nb, code: str):
    cells = [c for c in nb.cells if c.cell_type == "code" and code in c.source]
    assert len(cells) == 1, code
    return cells[0]


@pytest.fixture(scope="module")
def executed(bundled_cache, tmp_path_factory):
    """The notebook, run from a temporary directory by a fresh python3 kernel."""
    import nbformat
    from nbclient import NotebookClient
    from server import config_env

    with pytest.MonkeyPatch.context() as env:
        for name, value in config_env().items():
            env.setenv(name, value)
        env.setenv("GRADIO_SERVER_PORT", str(appserver.free_port()))
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        env.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        nb = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path_factory.mktemp("notebook"))}}).execute()
    return nb


def test_the_notebook_is_saved_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
def test_the_table_has_every_variant_and_int8_is_smaller(executed):
    text = cell_text(cell_with(executed, "table.to_string"))
    rows = {m[1]: (float(m[2]), float(m[3]), m[4]) for m in
            re.finditer(r"^(fp32|int8|nf4)\s+([\d.]+)\s+([\d.]+)\s+\S+\s+\S+\s+\S+\s+(.*)$", text, re.M)}
    assert set(rows) == {"fp32", "int8", "nf4"}, text
    assert rows["fp32"][1] == 1.0
    assert rows["nf4"][0] < rows["int8"][0] < rows["fp32"][0], text
    assert rows["int8"][1] > 1.3, text  # embeddings stay fp32 in this small model: ~1.5×, not 4×
    assert all("Paris" in answer for _, _, answer in rows.values()), text


@pytest.mark.slow
def test_the_footprints_are_plotted(executed):
    outputs = cell_with(executed, "ax.bar(").outputs
    assert any("image/png" in out.get("data", {}) for out in outputs), outputs


@pytest.mark.slow
def test_the_8b_estimate_says_about_30_gib_for_fp32(executed):
    text = cell_text(cell_with(executed, "quantplay.estimate("))
    assert "meta-llama/Llama-3.1-8B: 8.03 B parameters" in text, text
    fp32 = float(re.search(r"^\s+fp32\s+([\d.]+) GiB\s+(fits|does not fit)$", text, re.M)[1])
    assert 29.5 < fp32 < 30.5, text  # 8.03 B parameters × 4 bytes = 29.9 GiB


@pytest.mark.slow
def test_the_page_launched_inline_and_closed(executed):
    launched = cell_with(executed, "quantplay.launch()")
    assert not [o for o in launched.outputs if o["output_type"] == "error"]
    shown = "".join(o.get("data", {}).get("text/html", "") for o in launched.outputs)
    assert "<iframe" in shown, launched.outputs  # inline under the cell
    assert not [o for o in cell_with(executed, "demo.close()").outputs if o["output_type"] == "error"]
