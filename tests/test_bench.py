"""The benchmark runs and emits its schema; its figures live in docs/benchmarks.md, never in a test."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

KEYS = {"stream_overhead_ratio", "api_overhead_ratio", "nway_ratio", "nway_ratio_interleave", "nway_ratio_threads",
        "cache_hit_seconds", "cold_load_seconds", "reload_seconds", "prequantized_load_ratio", "memory_overhead_ratio",
        "metrics_seconds", "metrics_full_pass_seconds", "per_variant", "environment", "memory", "read_bandwidth_bytes_per_s"}


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
