"""Executes the notebooks in experiments/notebooks with nbclient (smoke settings).

The ablation notebook gets its papermill-style "parameters" cell replaced by tiny values;
its full-size smoke run (two presets, SFT and one GRPO step) is marked slow, and an unmarked
run with the smallest settings (one preset, no SFT or GRPO steps) covers the notebook's glue.
"""

import ast
import json
import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed: notebooks cannot be read")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed: notebooks cannot be executed")
pytest.importorskip("ipykernel", reason="ipykernel is not installed: no Python kernel to execute notebooks")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "notebooks"
KERNEL = "python3"
PARAMETER_NAMES = {"PRESETS", "SFT_STEPS", "GRPO_STEPS", "N_TRAIN_PER_FAMILY", "N_TEST_PER_FAMILY", "WORKDIR"}


def _require_kernel():
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.skip(f"no Jupyter kernel named {KERNEL!r} (install one with `python -m ipykernel install --sys-prefix`)")


def _parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected exactly one cell tagged 'parameters', found {len(cells)}"
    return cells[0]


def _assigned_names(source: str) -> set[str]:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def _execute(name, monkeypatch, *, parameters=None, timeout=300):
    """Runs notebook `name` from its own directory; returns the executed notebook."""
    _require_kernel()
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    if parameters is not None:
        cell = _parameters_cell(nb)
        cell.source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stdout")


def test_ablation_parameter_cell_names_every_parameter():
    nb = nbformat.read(NOTEBOOKS / "small_ablation.ipynb", as_version=4)
    assert _assigned_names(_parameters_cell(nb).source) == PARAMETER_NAMES


def test_notebooks_are_valid_and_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == KERNEL, path.name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has stored outputs"


def test_calibration_math_notebook_runs(monkeypatch):
    nb = _execute("calibration_math.ipynb", monkeypatch, timeout=120)
    out = _stdout(nb)
    # Facts of the spec's math, printed by the notebook's own checks:
    # RLOO = n/(n-1) times the mean baseline; group std makes sum A^2 = n - 1 = 7 for any informative group.
    assert "loo == n/(n-1) * mean on every valid rollout: True" in out
    assert "group scale, sum A^2 for 7/8 right: 7.0  for 4/8 right: 7.0" in out
    assert not re.search(r"\bnan\b|\binf\b", out.lower())


def _check_runs(workdir: pathlib.Path, presets, grpo_steps):
    for preset in presets:
        summary = json.loads((workdir / preset / "summary.json").read_text())
        assert summary["preset"] == preset
        assert summary["grpo_steps"] == grpo_steps
        rows = [json.loads(line) for line in (workdir / preset / "metrics.jsonl").read_text().splitlines()]
        assert sum(r["phase"] == "train" for r in rows) == grpo_steps


def _ablation(monkeypatch, tmp_path, **params):
    pytest.importorskip("ml_collections", reason="ml_collections (needed by launch/configs) is not installed")
    # One CPU device, as in a user's notebook (conftest gives pytest 8 simulated ones).
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    parameters = {**params, "WORKDIR": str(tmp_path / "runs")}
    assert set(parameters) == PARAMETER_NAMES
    nb = _execute("small_ablation.ipynb", monkeypatch, parameters=parameters, timeout=900)
    _check_runs(tmp_path / "runs", params["PRESETS"], params["GRPO_STEPS"])
    return nb


def test_small_ablation_notebook_runs_smallest(monkeypatch, tmp_path):
    _ablation(monkeypatch, tmp_path, PRESETS=["recal"], SFT_STEPS=0, GRPO_STEPS=0,
              N_TRAIN_PER_FAMILY=8, N_TEST_PER_FAMILY=2)


@pytest.mark.slow
def test_small_ablation_notebook_runs_two_presets(monkeypatch, tmp_path):
    nb = _ablation(monkeypatch, tmp_path, PRESETS=["grpo", "recal"], SFT_STEPS=2, GRPO_STEPS=1,
                   N_TRAIN_PER_FAMILY=8, N_TEST_PER_FAMILY=2)
    out = _stdout(nb)
    assert "| grpo |" in out and "| recal |" in out
