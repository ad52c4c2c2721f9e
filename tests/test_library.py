"""`import quantplay` as a script or a notebook uses it: compare, stream, estimate, launch, and its errors."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

import quantplay
from quantplay import appserver, library
from quantplay.errors import QuantplayError


@pytest.fixture
def unload_default_cache():
    """The library uses the process's cache (as a notebook would): empty it after the test."""
    yield
    from quantplay.loader import default_cache

    default_cache().unload()


def test_compare_returns_the_final_frame_that_stream_ends_with(tiny_dir, unload_default_cache):
    frames = list(quantplay.stream(str(tiny_dir), ["int8"], "Hello", max_new_tokens=4, device_map="cpu"))
    assert len(frames) >= 2
    assert [f.done for f in frames] == [False] * (len(frames) - 1) + [True]
    assert [v.name for v in frames[-1].variants] == ["fp32", "int8"]

    result = quantplay.compare(str(tiny_dir), ["int8"], "Hello", max_new_tokens=4, device_map="cpu")
    assert result.done and result.variant("int8").status == "done"
    assert result.variant("int8").new_tokens == 4
    assert result.variant("int8").text == frames[-1].variant("int8").text  # greedy: the same answer twice
    assert result.to_dict()["variants"][1]["text"] == result.variant("int8").text


def test_settings_default_as_in_the_cli_and_are_passed_down(tiny_dir, unload_default_cache):
    greedy = quantplay.compare(str(tiny_dir), "int8", "Hello", max_new_tokens=3, device_map="cpu")
    assert greedy.settings["do_sample"] is False and greedy.settings["top_p"] == 1.0
    sampled = quantplay.compare(str(tiny_dir), "int8", "Hello", max_new_tokens=3, temperature=0.8, top_p=0.5,
                                seed=7, chat_template=False, device_map="cpu")
    assert sampled.settings == {**greedy.settings, "do_sample": True, "temperature": 0.8, "top_p": 0.5, "seed": 7,
                                "chat_template": False}


def test_a_missing_variant_names_the_ones_present():
    from quantplay.comparison import ComparisonResult, VariantResult

    result = ComparisonResult("m", "p", variants=[VariantResult("fp32"), VariantResult("nf4")])
    assert result.variant("nf4") is result.variants[1]
    with pytest.raises(QuantplayError, match=r"No variant 'int8' in this result; it has fp32, nf4\."):
        result.variant("int8")


def test_a_refusal_is_a_quantplay_error_with_the_cli_message(tiny_dir):
    with pytest.raises(QuantplayError) as refused:
        quantplay.compare(str(tiny_dir), ["int9"], "Hello")
    cli = subprocess.run([sys.executable, "-m", "quantplay", "compare", "--model", str(tiny_dir), "--variants", "int9",
                          "--prompt", "Hello"], capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert cli.returncode == 2
    assert cli.stderr.strip().splitlines()[-1] == f"error: {refused.value}"
    assert "int9" in str(refused.value)


def test_estimate_an_8b_model_offline_from_the_shipped_config():
    result = quantplay.estimate("meta-llama/Llama-3.1-8B", device="cpu")
    assert result.config_source == "shipped config"
    assert 7.9e9 < result.parameters < 8.1e9
    assert 31.5e9 < result.estimates["fp32"] < 32.5e9  # 8.03 B parameters × 4 bytes
    assert result.estimates["nf4"] < result.estimates["int8"] < result.estimates["fp32"] / 2
    assert result.to_dict()["model"] == "meta-llama/Llama-3.1-8B"


def test_importing_quantplay_loads_no_torch_transformers_or_gradio():
    code = "import quantplay, sys; print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_every_submodule_leaves_the_functions_in_place():
    """A submodule named compare, stream, estimate or launch would replace the function on import."""
    names = [m.name for m in pkgutil.iter_modules(quantplay.__path__)]
    assert {"comparison", "estimator", "streaming", "ui"} <= set(names)
    for name in names:
        importlib.import_module(f"quantplay.{name}")
    assert (quantplay.compare, quantplay.stream, quantplay.estimate, quantplay.launch) == (
        library.compare, library.stream, library.estimate, library.launch)
    assert callable(quantplay.estimate) and quantplay.QuantplayError is QuantplayError


def test_no_function_re_executes_the_process(monkeypatch, tiny_dir, unload_default_cache):
    from quantplay import allocator

    def forbidden(*args, **kwargs):
        raise AssertionError("the library re-executed the process")

    monkeypatch.setattr(os, "execv", forbidden)
    monkeypatch.setattr(os, "execve", forbidden)
    monkeypatch.setattr(allocator, "use_preferred", forbidden)
    quantplay.compare(str(tiny_dir), ["int8"], "Hi", max_new_tokens=1, device_map="cpu")
    quantplay.estimate("gpt2", device="cpu")


@pytest.mark.api
def test_launch_serves_the_page_with_its_css_and_returns_the_blocks():
    import httpx

    from quantplay.ui import CSS

    demo = quantplay.launch(server_port=appserver.free_port(), prevent_thread_lock=True)
    try:
        assert demo.share is False and demo.is_running
        served = httpx.get(f"{demo.local_url}config", timeout=30).json()
        assert served["css"] == CSS
    finally:
        demo.close()
    assert not demo.is_running
