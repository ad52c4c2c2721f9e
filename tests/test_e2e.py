"""End to end on the bundled real model (SmolLM2-135M-Instruct, dequantized from the shipped GGUF)."""

import json
import logging
import subprocess
import sys

import pytest
from server import child_env

from quantplay import catalog
from quantplay.comparison import run_comparison
from quantplay.streaming import GenerationSettings

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def france(bundled_cache):
    frames = list(run_comparison(catalog.BUNDLED_NAME, ["int8", "nf4", "nf4-dq"], QUESTION,
                                 GenerationSettings(max_new_tokens=24), cache=bundled_cache))
    return {v.name: v for v in frames[-1].variants}, frames


def test_real_model_gives_coherent_answers(france):
    rows, _ = france
    assert "Paris" in rows["fp32"].text
    for name in ("int8", "nf4"):
        assert rows[name].status == "done"
        assert "Paris" in rows[name].text, rows[name].text
        assert len(rows[name].text.split()) >= 3


def test_footprints_shrink_as_advertised(france):
    rows, _ = france
    fp32 = rows["fp32"].footprint_bytes
    assert 480 * 2**20 < fp32 < 560 * 2**20  # 134.5 M parameters in float32
    assert rows["int8"].footprint_bytes < 0.5 * fp32
    assert rows["nf4"].footprint_bytes < 0.4 * fp32
    assert rows["nf4-dq"].footprint_bytes < rows["nf4"].footprint_bytes
    assert rows["nf4"].footprint_bytes > rows["nf4"].footprint_hf_bytes  # quant state counted


def test_int8_logs_stay_readable(bundled_cache, caplog):
    caplog.set_level(logging.WARNING)
    list(run_comparison(catalog.BUNDLED_NAME, ["int8"], "Hi", GenerationSettings(max_new_tokens=8),
                        cache=bundled_cache))
    assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]


def test_cli_json_prints_the_schema_and_nothing_else(bundled_cache):
    env = child_env()
    out = subprocess.run(
        [sys.executable, "-m", "quantplay", "compare", "--model", catalog.BUNDLED_NAME, "--variants", "fp32,int8,nf4",
         "--prompt", QUESTION, "--max-new-tokens", "24", "--json"],
        capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["done"] and result["model"] == catalog.BUNDLED_NAME
    assert set(result) >= {"model", "prompt", "prompt_token_ids", "done", "environment", "memory", "variants"}
    assert set(result["environment"]) >= {"device", "torch", "transformers", "bitsandbytes", "threads", "cpu_flags", "gpu"}
    assert set(result["memory"]) >= {"process_rss_peak_bytes", "cuda_allocated_bytes", "device_total_bytes",
                                     "device_available_bytes"}
    names = [v["name"] for v in result["variants"]]
    assert names == ["fp32", "int8", "nf4"]
    for v in result["variants"]:
        assert set(v) >= {"name", "status", "error", "warnings", "text", "token_ids", "new_tokens", "footprint_bytes",
                          "kv_cache_bytes", "load_seconds", "cache_hit", "ttft_seconds", "tokens_per_second"}
        assert v["status"] == "done" and v["text"]
    assert "MatMul8bitLt" not in out.stderr


def test_agreement_orders_int8_nf4_fp4_over_the_example_prompts(bundled_cache):
    """Mean KL from fp32, averaged over the shipped example prompts: int8 < nf4 < fp4."""
    from quantplay.ui import EXAMPLES

    kl: dict[str, list[float]] = {"int8": [], "nf4": [], "fp4": []}
    for prompt in EXAMPLES:
        final = list(run_comparison(catalog.BUNDLED_NAME, ["int8", "nf4", "fp4"], prompt,
                                    GenerationSettings(max_new_tokens=20), cache=bundled_cache))[-1]
        for v in final.variants[1:]:
            kl[v.name].append(v.kl_divergence_mean)
    mean = {name: sum(values) / len(values) for name, values in kl.items()}
    assert mean["int8"] < mean["nf4"] < mean["fp4"], mean
