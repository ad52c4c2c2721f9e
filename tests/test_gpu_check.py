"""scripts/gpu_check.py on CPU: the shipped wheels are installed only when something is missing,
into a private directory on PYTHONPATH, and the report says what ran."""

import importlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
gpu_check = importlib.import_module("gpu_check")


def _wheel(folder: Path) -> Path:
    """A minimal valid wheel holding one module, qp_fake_mod."""
    path = folder / "qp_fake_mod-1.0-py3-none-any.whl"
    info = "qp_fake_mod-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("qp_fake_mod.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: qp-fake-mod\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"qp_fake_mod.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


@pytest.mark.parametrize("pip", [True, False], ids=["pip", "no pip: unzipped"])
def test_missing_packages_come_from_the_shipped_wheels(tmp_path, monkeypatch, pip):
    if not pip:
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else find_spec(name, *a))
        monkeypatch.setattr(gpu_check, "subprocess", None)  # pip is not run: the wheels are unzipped
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _wheel(wheels)
    monkeypatch.setattr(gpu_check, "SITE", tmp_path / "site")
    monkeypatch.setattr(gpu_check, "NEEDED", ("qp_fake_mod", "torch"))
    env = {"PYTHONPATH": "/elsewhere"}
    notes = gpu_check.install_wheels(wheels, env, dry_run=False)
    assert notes == [f"missing qp_fake_mod: installed qp_fake_mod-1.0-py3-none-any.whl into {tmp_path / 'site'}"]
    assert env["PYTHONPATH"] == f"{tmp_path / 'site'}:/elsewhere"
    out = subprocess.run([sys.executable, "-c", "import qp_fake_mod; print(qp_fake_mod.VALUE)"],
                         capture_output=True, text=True, env={"PYTHONPATH": env["PYTHONPATH"]})
    assert out.stdout.strip() == "42", out.stderr


def test_nothing_is_installed_when_nothing_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "NEEDED", ("torch",))
    env: dict[str, str] = {}
    assert gpu_check.install_wheels(tmp_path, env, dry_run=False) == [
        "every needed package was already installed; no wheels used"]
    assert env == {}


def test_missing_without_wheels_points_to_the_readme(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "NEEDED", ("qp_not_there",))
    assert "no wheels in" in gpu_check.install_wheels(tmp_path / "none", {}, dry_run=False)[0]


def test_the_report_names_the_gpu_and_each_step():
    info = {"gpu": "NVIDIA H200", "capability": "9.0", "total_bytes": 140 * 2**30, "free_bytes": 139 * 2**30,
            "torch": "2.11.0", "bitsandbytes": "0.50.2"}
    steps = [{"name": "pytest -m gpu", "rc": 0, "seconds": 40.0, "stdout": "8 passed", "stderr": ""},
             {"name": "bench SmolLM2-135M-Instruct", "rc": 0, "seconds": 60.0, "stdout": "| measure |", "stderr": ""},
             {"name": "bench TinyLlama", "rc": None, "seconds": 0.0, "output": "not run: the check's time budget is spent"}]
    text = gpu_check.render(info, ["no wheels used"], steps, 100.0)
    assert "NVIDIA H200 (compute capability 9.0, 140.0 GiB, 139.0 GiB free)" in text
    assert "## pytest -m gpu: passed, 40 s" in text and "| measure |" in text
    assert "## bench TinyLlama: not run" in text and "time budget is spent" in text
