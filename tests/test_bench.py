"""The benchmark runs and emits its schema; its figures live in docs/benchmarks.md, never in a test."""

import json
import os
import subprocess
import sys

import pytest

KEYS = {"stream_overhead_ratio", "api_overhead_ratio", "nway_ratio", "nway_ratio_interleave", "nway_ratio_threads",
        "cache_hit_seconds", "cold_load_seconds", "reload_seconds", "prequantized_load_ratio", "memory_overhead_ratio",
        "metrics_seconds", "metrics_full_pass_seconds", "per_variant", "environment", "memory", "read_bandwidth_bytes_per_s",
        "batching_ratio", "batching_seconds", "evaluate_seconds", "evaluate"}


@pytest.mark.slow
@pytest.mark.timeout(1000)  # the bench's own child gets 900 s; the suite's default is 600
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
    assert result["batching_ratio"] > 0 and max(result["batching_seconds"]["batch_sizes"]) > 1
    assert result["evaluate_seconds"] > 0 and result["evaluate"]["prompts"] == 5


def test_ratios_divide_each_repeat_by_the_baselines_measured_around_it():
    from quantplay.bench import ratio

    # a machine that slows down steadily: path and bare both take 10% longer each step
    bare = [1.0, 1.1, 1.2, 1.3]  # before repeat 1, between each, after repeat 3
    path = [1.05 * 1.05, 1.05 * 1.15, 1.05 * 1.25]  # each measured halfway between its two baselines
    r = ratio(path, bare)
    assert r["n"] == 3 and r["median"] == pytest.approx(1.05) and r["max"] == pytest.approx(1.05)
    plain = ratio([2.0, 3.0], [1.0, 2.0])  # one baseline per repeat: repeat over its own
    assert (plain["min"], plain["max"], plain["median"]) == (1.5, 2.0, 1.75)


def a_bench(variants=("fp32", "int8"), repeats=2):
    from quantplay.bench import Bench
    from quantplay.config import Config

    return Bench("m", variants, quick=True, repeats=repeats, config=Config(), log=lambda message: None)


def test_phases_summarize_the_interleaved_repeats():
    from quantplay import bench

    b = a_bench()
    runs = bench.Runs({"fp32": [1.0, 1.0, 1.0], "int8": [2.0, 2.0, 2.0]}, stream=[1.1, 1.2],
                      nway_interleave=[3.3, 3.6], nway_threads=[6.0, 6.0], metrics=[0.1, 0.3], full_pass=[0.5, 0.7])
    result = {"notes": []}
    bench.stream_overhead(b, runs, result)
    bench.nway(b, runs, result)
    bench.metrics_cost(runs, result)
    assert result["stream_overhead_ratio"]["median"] == pytest.approx(1.15)
    assert result["nway_ratio_interleave"]["median"] == pytest.approx(1.15)  # (3.3, 3.6) over 1 + 2 s of bare
    assert result["nway_ratio_threads"]["median"] == pytest.approx(2.0)
    expected = "nway_ratio_threads" if bench.metrics.default_device().startswith("cuda") else "nway_ratio_interleave"
    assert result["nway_ratio"] == result[expected]
    assert result["metrics_seconds"]["median"] == pytest.approx(0.2)
    assert result["bare_generate_seconds"]["int8"]["n"] == 3 and len(result["notes"]) == 2
    no_fp32 = {"notes": []}
    bench.stream_overhead(a_bench(("int8",)), bench.Runs({"int8": [1.0, 1.0]}, stream=[1.0]), no_fp32)
    assert no_fp32["stream_overhead_ratio"] is None


def test_repeats_below_one_are_refused():
    from quantplay.bench import run_bench
    from quantplay.errors import QuantplayError

    with pytest.raises(QuantplayError, match="repeats must be at least 1"):
        run_bench("SmolLM2-135M-Instruct", ("fp32",), repeats=0)


def test_random_init_passes_its_directory_down_without_touching_the_environment(tiny_dir, tmp_path):
    from quantplay import catalog
    from quantplay.bench_measure import child_env, random_init_model
    from quantplay.config import Config

    config = Config.from_mapping({"QUANTPLAY_MODEL_DIRS": str(tiny_dir.parent), "QUANTPLAY_CACHE_DIR": str(tmp_path)})
    before = dict(os.environ)
    target, passed = random_init_model(str(tiny_dir), config, log=lambda message: None)
    assert dict(os.environ) == before
    root = (tmp_path / "random-init").resolve()
    assert target.startswith(str(root)) and passed.model_dirs == (*config.model_dirs, root)
    assert catalog.resolve(target, config=passed).path == target
    with pytest.raises(catalog.ModelUnavailable):
        catalog.resolve(target, config=config)
    env = child_env(passed, disk_cache=False)  # what a bench child and the app are handed
    assert env["QUANTPLAY_MODEL_DIRS"].split(os.pathsep) == [str(d) for d in passed.model_dirs]
    assert env["QUANTPLAY_CACHE_DIR"] == str(tmp_path) and env["QUANTPLAY_DISK_CACHE_LIMIT"] == "0"
    assert child_env(passed).get("QUANTPLAY_DISK_CACHE_LIMIT") == os.environ.get("QUANTPLAY_DISK_CACHE_LIMIT")
