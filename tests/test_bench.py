"""The benchmark runs and emits its schema; its figures live in docs/benchmarks.md, never in a test."""

import json
import os
import subprocess
import sys

import pytest

KEYS = {"stream_overhead_ratio", "api_overhead_ratio", "nway_ratio", "nway_ratio_interleave", "nway_ratio_threads",
        "cache_hit_seconds", "cold_load_seconds", "reload_seconds", "prequantized_load_ratio", "memory_overhead_ratio",
        "metrics_seconds", "metrics_full_pass_seconds", "per_variant", "environment", "memory", "read_bandwidth_bytes_per_s"}


@pytest.mark.slow
def test_bench_quick_emits_the_schema():
    out = subprocess.run([sys.executable, "-m", "quantplay", "bench", "--quick", "--json"], capture_output=True,
                         text=True, timeout=900, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert KEYS <= set(result)
    for key in ("stream_overhead_ratio", "api_overhead_ratio", "nway_ratio", "prequantized_load_ratio"):
        assert set(result[key]) == {"median", "min", "max", "n"} and result[key]["median"] > 0
    assert set(result["per_variant"]) == {"fp32", "int8", "nf4"}
    for row in result["per_variant"].values():
        assert row["decode_tokens_per_second"] > 0 and 0 < row["bandwidth_fraction"] < 1
    assert result["memory_overhead_ratio"] > 0


def test_ratios_divide_each_repeat_by_the_baselines_measured_around_it():
    from quantplay.bench import ratio

    # a machine that slows down steadily: path and bare both take 10% longer each step
    bare = [1.0, 1.1, 1.2, 1.3]  # before repeat 1, between each, after repeat 3
    path = [1.05 * 1.05, 1.05 * 1.15, 1.05 * 1.25]  # each measured halfway between its two baselines
    r = ratio(path, bare)
    assert r["n"] == 3 and r["median"] == pytest.approx(1.05) and r["max"] == pytest.approx(1.05)
    plain = ratio([2.0, 3.0], [1.0, 2.0])  # one baseline per repeat: repeat over its own
    assert (plain["min"], plain["max"], plain["median"]) == (1.5, 2.0, 1.75)
