import json
import subprocess
import sys
import time

import pytest

from quantplay import catalog
from quantplay.estimate import estimate_model, shipped_configs


def test_configs_ship_for_offline_estimates():
    assert {"gpt2", "meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3", "Qwen/Qwen2.5-7B",
            "meta-llama/Llama-3.1-70B"} <= set(shipped_configs())


def test_llama_8b_fp16_is_16_gb():
    result = estimate_model("meta-llama/Llama-3.1-8B", device="cpu")
    assert result["parameters"] == pytest.approx(8.03e9, rel=0.005)
    assert result["estimates"]["fp16"] == pytest.approx(16.06e9, rel=0.02)
    est = result["estimates"]
    assert est["fp32"] > est["fp16"] > est["int8"] > est["nf4"] > est["nf4-dq"]
    assert set(result["fits"]) == set(est) and result["available_bytes"] > 0


def test_published_parameter_counts():
    for name, params in [("gpt2", 124.4e6), ("mistralai/Mistral-7B-v0.3", 7.25e9), ("Qwen/Qwen2.5-7B", 7.62e9),
                         ("meta-llama/Llama-3.1-70B", 70.55e9), (catalog.BUNDLED_NAME, 134.5e6)]:
        assert estimate_model(name, device="cpu")["parameters"] == pytest.approx(params, rel=0.01), name


def test_70b_takes_seconds():
    start = time.perf_counter()
    estimate_model("meta-llama/Llama-3.1-70B", device="cpu")
    assert time.perf_counter() - start < 30


def test_unknown_model_offline_names_the_shipped_configs():
    with pytest.raises(catalog.ModelUnavailable, match="Configs shipped"):
        estimate_model("some/unknown-model")


def test_cli_json_schema():
    out = subprocess.run([sys.executable, "-m", "quantplay", "estimate", "--model", "gpt2", "--json"],
                         capture_output=True, text=True, timeout=120)
    data = json.loads(out.stdout)
    assert set(data) >= {"model", "parameters", "estimates", "available_bytes", "fits"}
    assert list(data["estimates"]) == ["fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq", "fp4"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["fp32", "int8", "nf4", "nf4-dq"])
def test_estimates_within_5_percent_of_measured_footprint(bundled_cache, preset):
    from quantplay.presets import PRESETS

    source = catalog.resolve(catalog.BUNDLED_NAME)
    entry, _ = bundled_cache.get(source, PRESETS[preset], "cpu")
    estimated = estimate_model(catalog.BUNDLED_NAME, device="cpu")["estimates"][preset]
    assert estimated == pytest.approx(entry.footprint_bytes, rel=0.05)
