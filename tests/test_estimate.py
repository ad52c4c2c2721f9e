import json
import subprocess
import sys
import time
from unittest import mock

import pytest
from server import child_env

from quantplay import catalog
from quantplay.config import Config
from quantplay.estimator import estimate_model, load_config, shipped_configs


def test_configs_ship_for_offline_estimates():
    assert {"gpt2", "meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3", "Qwen/Qwen2.5-7B",
            "meta-llama/Llama-3.1-70B"} <= set(shipped_configs())


def test_llama_8b_fp16_is_16_gb():
    result = estimate_model("meta-llama/Llama-3.1-8B", device="cpu")
    assert result.parameters == pytest.approx(8.03e9, rel=0.005)
    assert result.estimates["fp16"] == pytest.approx(16.06e9, rel=0.02)
    est = result.estimates
    assert est["fp32"] > est["fp16"] > est["int8"] > est["nf4"] > est["nf4-dq"]
    assert set(result.fits) == set(est) and result.available_bytes > 0
    assert result.fits == {name: size <= result.available_bytes for name, size in est.items()}
    assert result.to_dict()["estimates"] == est and result.to_dict()["config_source"] == "shipped config"


def test_published_parameter_counts():
    for name, params in [("gpt2", 124.4e6), ("mistralai/Mistral-7B-v0.3", 7.25e9), ("Qwen/Qwen2.5-7B", 7.62e9),
                         ("meta-llama/Llama-3.1-70B", 70.55e9), (catalog.BUNDLED_NAME, 134.5e6)]:
        assert estimate_model(name, device="cpu").parameters == pytest.approx(params, rel=0.01), name


def test_70b_takes_seconds():
    start = time.perf_counter()
    estimate_model("meta-llama/Llama-3.1-70B", device="cpu")
    # a few seconds here; the margin is for a loaded 2-core machine. What it catches is weights being
    # materialised (280 GB in float32), which would take minutes or run out of memory.
    assert time.perf_counter() - start < 30


def test_unknown_model_offline_names_the_shipped_configs():
    with pytest.raises(catalog.ModelUnavailable, match="Configs shipped"):
        estimate_model("some/unknown-model")


@pytest.mark.parametrize("trust", [False, True])
def test_remote_code_is_the_configs_switch(tiny_dir, trust):
    from transformers import AutoConfig

    settings = Config(model_dirs=(tiny_dir,), trust_remote_code=trust)
    with mock.patch.object(AutoConfig, "from_pretrained", return_value="model config") as read:
        assert load_config(str(tiny_dir), config=settings) == ("model config", "local")
    assert read.call_args.kwargs["trust_remote_code"] is trust


def test_cli_json_schema():
    out = subprocess.run([sys.executable, "-m", "quantplay", "estimate", "--model", "gpt2", "--json"],
                         capture_output=True, text=True, timeout=120, env=child_env())
    data = json.loads(out.stdout)
    assert set(data) >= {"model", "parameters", "estimates", "available_bytes", "fits"}
    assert list(data["estimates"]) == ["fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq", "fp4"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["fp32", "int8", "nf4", "nf4-dq"])
def test_estimates_within_5_percent_of_measured_footprint(bundled_cache, preset):
    from quantplay.presets import PRESETS

    source = catalog.resolve(catalog.BUNDLED_NAME)
    entry, _ = bundled_cache.get(source, PRESETS[preset], "cpu")
    estimated = estimate_model(catalog.BUNDLED_NAME, device="cpu").estimates[preset]
    assert estimated == pytest.approx(entry.footprint_bytes, rel=0.05)
