"""`python -m quantplay bench`: every cost the playground adds, measured in one run, phase by phase.

Each ratio compares the path a user takes (the comparison code, the API) with a
bare `model.generate` on the same loaded model, A/B interleaved `repeats` times
with the bare baseline measured before and after every repeat (A B A … B A, each
B over the mean of its two A's: a machine that drifts cancels out); medians are
reported with min and max beside them. Cold loads and memory run in fresh child
processes (see `bench_measure`), so one measurement's allocations never colour
another's. `run_bench` runs the phases in order; each phase writes its figures
(and a note on how to read them) into the report. The bench's settings are a
`Config` passed down (a random-init model adds its directory to a copy of it);
the bench never edits the environment.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from . import catalog, metrics, quality
from . import config as qconfig
from .bench_measure import (
    Log,
    bare_generate,
    measure_api,
    random_init_model,
    read_bandwidth_bytes_per_s,
    run_child,
    sessions_at_once,
    timed_comparison,
)
from .comparison import ComparisonResult
from .compute import COMPUTE
from .config import Config
from .errors import QuantplayError
from .loaded import LoadedModel
from .loader import ModelCache
from .presets import get_preset

DEFAULT_REPEATS = 7  # back-to-back runs differ widely in a ratio (min/max in docs/benchmarks.md); 7 hold the median
Report = dict[str, Any]


def stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio(num: list[float], den: list[float]) -> dict[str, float]:
    """Per-repeat ratios, then their median, min and max.

    `den` may hold one more value than `num`, a baseline measured before and after each
    repeat (A B A B … A): each B is then divided by the mean of the two A's around it,
    which cancels a machine that drifts slower or faster over the run.
    """
    if len(den) == len(num) + 1:
        den = [(a + b) / 2 for a, b in zip(den, den[1:])]
    return stat([a / b for a, b in zip(num, den)])


@dataclass(frozen=True)
class Bench:
    """What every phase needs to know: the model, its variants, how long to measure, the settings."""

    model: str
    variants: tuple[str, ...]
    quick: bool
    repeats: int
    config: Config
    log: Log

    @property
    def new_tokens(self) -> int:
        return 16 if self.quick else 64

    @property
    def device(self) -> str:
        return metrics.default_device()

    @property
    def quantized(self) -> list[str]:
        return [v for v in self.variants if get_preset(v).quantized]


def run_bench(model: str = catalog.BUNDLED_NAME, variants: tuple[str, ...] = ("fp32", "int8", "nf4"),
              quick: bool = False, random_init: bool = False, repeats: int | None = None,
              log: Log = lambda message: print(message, file=sys.stderr), config: Config | None = None) -> Report:
    config = config or qconfig.current()
    if random_init:
        model, config = random_init_model(model, config, log)
    repeats = (1 if quick else DEFAULT_REPEATS) if repeats is None else repeats
    if repeats < 1:
        raise QuantplayError("repeats must be at least 1.")
    b = Bench(model, tuple(variants), quick, repeats, config, log)
    result: Report = {"model": model, "variants": list(variants), "quick": quick, "random_init": random_init,
                      "repeats": repeats, "new_tokens": b.new_tokens, "environment": metrics.environment(b.device),
                      "date": time.strftime("%Y-%m-%d"), "notes": []}
    loads = cold_loads(b, result)
    prequantized_loads(b, loads, result)
    memory(b, result)
    cache = ModelCache(budget_bytes=64 * 2**30, config=config)
    source = catalog.resolve(model, config=config)
    with ExitStack() as leases:  # the measured variants stay loaded (and unevictable) while they are measured
        entries = {v: leases.enter_context(cache.lease(source, get_preset(v)))[0] for v in variants}
        ids = timed_comparison(model, ["fp32"], cache, 1, config)[1].prompt_token_ids
        cache_hits(b, cache, result)
        runs = interleaved(b, cache, entries, ids)
        stream_overhead(b, runs, result)
        nway(b, runs, result)
        metrics_cost(runs, result)
        per_variant(b, runs, result)
        api_overhead(b, entries, ids, result)
        batching(b, cache, result)
        evaluation(b, cache, result)
    cache.unload()
    return result


# -- loads and memory, in fresh processes ----------------------------------------------
@dataclass
class Loads:
    """Seconds per variant: first loads in a fresh process, then again in it (imports warm);
    quantizing the fp32 checkpoint on load, and from the disk cache of quantized weights (pre_)."""

    cold: dict[str, list[float]]
    reload: dict[str, list[float]]
    pre_cold: dict[str, list[float]]
    pre_reload: dict[str, list[float]]


def cold_loads(b: Bench, result: Report) -> Loads:
    b.log("cold loads in fresh processes (OS file cache warm)…")
    loads = Loads(*({v: [] for v in names} for names in (b.variants, b.variants, b.quantized, b.quantized)))
    for v in b.quantized:
        run_child({"model": b.model, "variants": [v]}, b.config, disk_cache=True)  # makes sure the disk entry exists
    for _ in range(1 if b.quick else 3):
        for v in b.variants:
            out = run_child({"model": b.model, "variants": [v], "reload": True}, b.config, disk_cache=False)
            loads.cold[v].append(out["load_seconds"][v])
            loads.reload[v].append(out["reload_seconds"][v])
        for v in b.quantized:
            out = run_child({"model": b.model, "variants": [v], "reload": True}, b.config, disk_cache=True)
            loads.pre_cold[v].append(out["load_seconds"][v])
            loads.pre_reload[v].append(out["reload_seconds"][v])
    result["cold_load_seconds"] = {v: stat(t) for v, t in loads.cold.items()}
    result["reload_seconds"] = {v: stat(t) for v, t in loads.reload.items()}
    result["notes"].append("cold_load_seconds: the first load in a fresh process, OS file cache warm; it includes "
                           "one-off imports (seconds). reload_seconds: the same variant loaded again in that process "
                           "after unloading it (imports warm): the load itself.")
    return loads


def prequantized_loads(b: Bench, loads: Loads, result: Report) -> None:
    if not b.quantized:
        return
    result["prequantized_load_seconds"] = {v: stat(t) for v, t in loads.pre_reload.items()}
    result["prequantized_cold_load_seconds"] = {v: stat(t) for v, t in loads.pre_cold.items()}
    result["prequantized_load_ratio"] = stat([statistics.median(loads.pre_reload[v]) / statistics.median(loads.reload[v])
                                              for v in b.quantized])
    result["prequantized_cold_load_ratio"] = stat([statistics.median(loads.pre_cold[v]) / statistics.median(loads.cold[v])
                                                   for v in b.quantized])
    result["notes"].append("prequantized_load_ratio: a load from the disk cache of quantized weights over a load "
                           "that quantizes the fp32 checkpoint, both with imports warm (reload_seconds); "
                           "prequantized_cold_load_ratio: the same for first loads in fresh processes.")


def memory(b: Bench, result: Report) -> None:
    """Peak RSS over the weights' footprints, loading every variant in one fresh process."""
    b.log("memory overhead in a fresh process…")
    spec = {"model": b.model, "variants": list(b.variants), "memory": True}
    on_the_fly = run_child(spec, b.config, disk_cache=False)
    from_disk = run_child(spec, b.config, disk_cache=True)
    for label, m in (("memory", from_disk), ("memory_quantizing_on_load", on_the_fly)):
        footprint = sum(m["footprint_bytes"].values())
        result[label] = {"rss_before_bytes": m["rss_before"], "rss_peak_bytes": m["rss_peak"],
                         "footprints_bytes": footprint, "ratio": (m["rss_peak"] - m["rss_before"]) / footprint,
                         "rss_after_unload_bytes": m["rss_after_unload"],
                         "left_after_unload_bytes": m["rss_after_unload"] - m["rss_before"]}
    result["memory_overhead_ratio"] = result["memory"]["ratio"]


# -- the loaded variants, in this process ----------------------------------------------
def cache_hits(b: Bench, cache: ModelCache, result: Report) -> None:
    """A cache hit: lease a loaded variant and give it back, as every request does."""
    source, preset = catalog.resolve(b.model, config=b.config), get_preset(b.variants[0])
    hits = []
    for _ in range(20):
        start = time.perf_counter()
        with cache.lease(source, preset):
            pass
        hits.append(time.perf_counter() - start)
    result["cache_hit_seconds"] = stat(hits)


@dataclass
class Runs:
    """The A/B interleaved repeats: bare generates around each repeat, and each path's seconds."""

    bare: dict[str, list[float]]
    stream: list[float] = field(default_factory=list)
    nway_interleave: list[float] = field(default_factory=list)
    nway_threads: list[float] = field(default_factory=list)
    metrics: list[float] = field(default_factory=list)
    full_pass: list[float] = field(default_factory=list)
    final: ComparisonResult | None = None  # the last interleaved comparison: its per-variant figures are reported


def interleaved(b: Bench, cache: ModelCache, entries: dict[str, LoadedModel], ids: list[int]) -> Runs:
    b.log(f"A/B interleaved, {b.repeats} repeat(s) of {b.new_tokens} tokens, bare generate before and after each…")
    runs = Runs({v: [] for v in b.variants})
    for i in range(b.repeats + 1):
        for v in b.variants:
            runs.bare[v].append(bare_generate(entries[v].model, ids, b.new_tokens))
        if i == b.repeats:
            return runs
        _repeat(b, cache, entries, ids, runs)
        b.log(f"repeat {i + 1}/{b.repeats}: bare {sum(t[-1] for t in runs.bare.values()):.2f} s · n-way interleave "
              f"{runs.nway_interleave[-1]:.2f} s · threads {runs.nway_threads[-1]:.2f} s")
    return runs


def _repeat(b: Bench, cache: ModelCache, entries: dict[str, LoadedModel], ids: list[int], runs: Runs) -> None:
    runs.stream.append(timed_comparison(b.model, ["fp32"], cache, b.new_tokens, b.config)[0])
    seconds, runs.final = timed_comparison(b.model, list(b.variants), cache, b.new_tokens, b.config, "interleave")
    runs.nway_interleave.append(seconds)
    runs.nway_threads.append(timed_comparison(b.model, list(b.variants), cache, b.new_tokens, b.config, "threads")[0])
    runs.metrics.append(runs.final.scoring_seconds or 0.0)
    start = time.perf_counter()  # the same metrics without reusing the generations' logits and caches
    COMPUTE.call(quality.score_variants, [entries[v].model for v in b.variants], ids + runs.final.variants[0].token_ids,
                 len(ids))
    runs.full_pass.append(time.perf_counter() - start)


def stream_overhead(b: Bench, runs: Runs, result: Report) -> None:
    """One fp32 comparison over a bare generate of the same tokens."""
    result["stream_overhead_ratio"] = ratio(runs.stream, runs.bare["fp32"]) if "fp32" in b.variants else None
    result["bare_generate_seconds"] = {v: stat(t) for v, t in runs.bare.items()}
    result["notes"].append("Ratios: each repeat of the path is divided by the mean of the bare generates measured "
                           "just before and just after it (A B A … B A), so a machine that drifts cancels out.")


def nway(b: Bench, runs: Runs, result: Report) -> None:
    """Every variant in one comparison over their bare generates one after another."""
    sums = [sum(runs.bare[v][i] for v in b.variants) for i in range(b.repeats + 1)]
    result["nway_ratio"] = ratio(runs.nway_interleave, sums)  # the default schedule, on CPU and CUDA alike
    result["nway_ratio_interleave"] = ratio(runs.nway_interleave, sums)
    result["nway_ratio_threads"] = ratio(runs.nway_threads, sums)


def metrics_cost(runs: Runs, result: Report) -> None:
    result["metrics_seconds"] = stat(runs.metrics)
    result["metrics_full_pass_seconds"] = stat(runs.full_pass)
    result["notes"].append("metrics_seconds: the agreement metrics' share of an n-way comparison (they reuse each "
                           "variant's own logits and KV cache); metrics_full_pass_seconds: the same metrics from "
                           "full teacher-forced passes.")


def per_variant(b: Bench, runs: Runs, result: Report) -> None:
    """Each variant's decode speed beside its bare speed, and the share of read bandwidth it uses."""
    bandwidth = COMPUTE.call(read_bandwidth_bytes_per_s) if not b.device.startswith("cuda") else None
    result["read_bandwidth_bytes_per_s"] = bandwidth
    result["per_variant"] = {
        row.name: {"decode_tokens_per_second": row.tokens_per_second, "ttft_seconds": row.ttft_seconds,
                   "footprint_bytes": row.footprint_bytes, "device": row.device,
                   "vram_peak_bytes": row.cuda_peak_allocated_bytes,  # on CUDA: weights + its generation's most
                   "bare_tokens_per_second": b.new_tokens / statistics.median(runs.bare[row.name]),
                   "bandwidth_fraction": (row.footprint_bytes * row.tokens_per_second / bandwidth)
                   if bandwidth and row.tokens_per_second else None}
        for row in runs.final.variants}


def api_overhead(b: Bench, entries: dict[str, LoadedModel], ids: list[int], result: Report) -> None:
    """fp32 through a launched app's /compare over a bare generate, per token."""
    b.log("API overhead through a launched app…")
    base = entries["fp32" if "fp32" in b.variants else b.variants[0]].model
    try:
        api, bare = measure_api(b.model, b.new_tokens, b.repeats, lambda: bare_generate(base, ids, b.new_tokens),
                                b.config, b.log)
        result["api_overhead_ratio"] = ratio(api, bare)
    except Exception as exc:  # report what was measured; say what was not
        result["api_overhead_ratio"] = None
        result["notes"].append(f"api_overhead_ratio not measured: {exc}")


def batching(b: Bench, cache: ModelCache, result: Report) -> None:
    """8 sessions with 8 different prompts, fp32, every one generating all its tokens: their aggregate
    throughput at once (decoded in one batch, batching.py) over the same sessions one after another."""
    from .loadtest import PROMPTS

    if "fp32" not in b.variants:
        return
    b.log("8 different prompts, one after another and then at once…")
    alone, _ = sessions_at_once(b.model, list(PROMPTS), cache, b.new_tokens, b.config, at_once=False)
    together, sizes = sessions_at_once(b.model, list(PROMPTS), cache, b.new_tokens, b.config, at_once=True)
    result["batching_ratio"] = alone / together
    result["batching_seconds"] = {"one_by_one": alone, "at_once": together, "batch_sizes": sorted(set(sizes))}
    b.log(f"  one by one {alone:.1f} s · at once {together:.1f} s (batch sizes {sorted(set(sizes))})")


def evaluation(b: Bench, cache: ModelCache, result: Report) -> None:
    """`quantplay evaluate` on the shipped prompts (the first 5 with --quick) against int8, nf4 and fp4, as the
    command runs it (32 tokens of fp32 per prompt); the variants load first, so only the evaluation is timed."""
    from . import evaluate

    prompts = evaluate.shipped_prompts()[:5 if b.quick else None]
    variants = ["fp32", "int8", "nf4", "fp4"]
    b.log(f"evaluate: {len(prompts)} prompts against int8, nf4 and fp4…")
    source = catalog.resolve(b.model, config=b.config)
    with ExitStack() as leases:
        for name in variants:
            leases.enter_context(cache.lease(source, get_preset(name)))
        report = evaluate.run_evaluation(b.model, variants, prompts, cache=cache, config=b.config)
    result["evaluate_seconds"] = report["seconds"]
    result["evaluate"] = {"prompts": len(prompts), "tokens": report["tokens"],
                          "kl_mean": {n: r["kl_mean"] for n, r in report["results"].items()}}
    b.log(f"  {report['seconds']:.1f} s for {report['tokens']} tokens")
