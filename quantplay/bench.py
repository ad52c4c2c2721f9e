"""`python -m quantplay bench`: every cost the playground adds, measured in one run.

Each ratio compares the path a user takes (the comparison code, the API) with a
bare `model.generate` on the same loaded model, A/B interleaved `repeats` times
with the bare baseline measured before and after every repeat (A B A … B A, each
B over the mean of its two A's: a machine that drifts cancels out); medians are
reported with min and max beside them. Cold loads and memory run in
fresh child processes (`python -m quantplay.bench child ...`), so one
measurement's allocations never colour another's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from . import catalog, metrics, quality
from .compare import run_comparison
from .compute import COMPUTE
from .loader import ModelCache
from .presets import get_preset
from .streaming import GenerationSettings

BENCH_PROMPT = "Once upon a time, in a village at the edge of a forest,"
DEFAULT_REPEATS = 7  # back-to-back runs here differ by up to 0.3 in a ratio: enough for the median to hold
Log = Callable[[str], None]


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


def read_bandwidth_bytes_per_s(size: int = 1 << 30, repeats: int = 3) -> float:
    """Memory read bandwidth as torch sees it: the best of a few full reads of a large tensor."""
    x = torch.ones(size // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    del x
    return size / best


def bare_generate(model, ids: list[int], new_tokens: int) -> float:
    """A plain greedy `generate`, timed: the notebook baseline (the seed tutorial's
    `with torch.no_grad(): model.generate(...)`, as quantplay runs it). It runs on the compute
    thread, where quantplay runs its own generations, so both get the same OpenMP team."""
    return COMPUTE.call(_bare_generate, model, ids, new_tokens)


def _bare_generate(model, ids: list[int], new_tokens: int) -> float:
    input_ids = torch.tensor([ids], device=model.device)
    start = time.perf_counter()
    with torch.no_grad():  # the notebook's generate; quantplay runs in inference_mode, 6-9% faster (docs/benchmarks.md)
        model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_comparison(model: str, variants: list[str], cache: ModelCache, new_tokens: int, schedule: str | None = None):
    settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    start = time.perf_counter()
    frames = list(run_comparison(model, variants, BENCH_PROMPT, settings, cache=cache, schedule=schedule))
    return time.perf_counter() - start, frames[-1]


def _touch(model) -> None:
    """One forward pass, so every weight page is resident (safetensors are memory-mapped)."""
    with torch.inference_mode():
        model(input_ids=torch.tensor([[1, 2, 3]], device=model.device))


def child(args: list[str]) -> dict[str, Any]:
    """In a fresh process: load variants (each twice: first, then again after unloading it, when imports
    and file cache are warm), touch their weights, report times and memory, unload, report again."""
    spec = json.loads(args[0])
    cache = ModelCache(budget_bytes=spec.get("budget", 64 * 2**30))
    source = catalog.resolve(spec["model"])
    if spec.get("memory"):  # code and the shared tokenizer stay loaded by design: count from after them
        import bitsandbytes  # noqa: F401

        from .loader import tokenizer_for

        cache.footprint_estimate(source, get_preset(spec["variants"][0]), metrics.default_device())
        tokenizer_for(source)
    metrics.release_memory()
    before = metrics.process_rss_bytes()
    first, again, footprints = {}, {}, {}
    for name in spec["variants"]:
        for times in ((first, again) if spec.get("reload") else (first,)):
            if times is again:
                cache.unload(preset_name=name)
            start = time.perf_counter()
            entry, _ = cache.get(source, get_preset(name), spec.get("device_map", "auto"))
            times[name] = time.perf_counter() - start
        COMPUTE.call(_touch, entry.model)
        footprints[name] = entry.footprint_bytes
        del entry
    peak = metrics.process_rss_peak_bytes()
    loaded = metrics.process_rss_bytes()
    cache.unload()
    metrics.release_memory()
    return {"load_seconds": first, "reload_seconds": again, "footprint_bytes": footprints, "rss_before": before,
            "rss_peak": peak, "rss_loaded": loaded, "rss_after_unload": metrics.process_rss_bytes()}


def run_child(spec: dict[str, Any], disk_cache: bool) -> dict[str, Any]:
    env = dict(os.environ)
    if not disk_cache:
        env["QUANTPLAY_DISK_CACHE_LIMIT"] = "0"
    out = subprocess.run([sys.executable, "-m", "quantplay.bench", "child", json.dumps(spec)], capture_output=True,
                         text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"bench child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_api(model: str, new_tokens: int, repeats: int, bare: Callable[[], float], log: Log
                ) -> tuple[list[float], list[float]]:
    """Seconds per generated token through a launched app's /compare (fp32 alone), and the bare
    baseline's, measured around each call (bare, API, bare, …, bare): (api, bare) per-token lists."""
    from gradio_client import Client

    from .appserver import running_app

    with running_app() as (url, _):
        client = Client(url, verbose=False)
        call = dict(model=model, variants=["fp32"], prompt=BENCH_PROMPT, max_new_tokens=new_tokens, api_name="/compare")
        client.predict(**call)  # warm: loads fp32 in the app
        api, baseline = [], [bare() / new_tokens]
        for i in range(repeats):
            start = time.perf_counter()
            final = client.predict(**call)
            api.append((time.perf_counter() - start) / max(1, final["variants"][0]["new_tokens"]))
            baseline.append(bare() / new_tokens)
            log(f"api repeat {i + 1}/{repeats}: {api[-1] * 1000:.1f} ms/token (bare {baseline[-1] * 1000:.1f})")
        return api, baseline


def random_init_model(name: str, log: Log) -> str:
    """The architecture of `name` with random weights, saved as an allow-listed local model.

    Speed and memory do not depend on the weights' values, so this measures a model
    whose weights cannot be brought along. Returns the directory to use as the model name.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .estimate import load_config

    config, _ = load_config(name)
    root = catalog.cache_dir() / "random-init"
    target = root / name.replace("/", "--")
    if not (target / "config.json").is_file():
        log(f"building {name} with random weights (once)…")
        if name in (catalog.BUNDLED_NAME, catalog.BUNDLED_HUB_ID) and catalog.bundled_gguf():
            tokenizer = AutoTokenizer.from_pretrained(catalog.ensure_bundled())
        else:
            tokenizer = AutoTokenizer.from_pretrained(catalog.resolve(name).path)
        torch.manual_seed(0)
        config.dtype = "float32"
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        del model
    dirs = os.environ.get("QUANTPLAY_MODEL_DIRS", "")
    if str(root) not in dirs.split(os.pathsep):
        os.environ["QUANTPLAY_MODEL_DIRS"] = os.pathsep.join(d for d in (dirs, str(root)) if d)
    return str(target)


def run_bench(model: str = catalog.BUNDLED_NAME, variants: tuple[str, ...] = ("fp32", "int8", "nf4"),
              quick: bool = False, random_init: bool = False, repeats: int | None = None,
              log: Log = lambda message: print(message, file=sys.stderr)) -> dict[str, Any]:
    if random_init:
        model = random_init_model(model, log)
    repeats = (1 if quick else DEFAULT_REPEATS) if repeats is None else repeats
    if repeats < 1:
        raise ValueError("repeats must be at least 1.")
    new_tokens = 16 if quick else 64
    device = metrics.default_device()
    result: dict[str, Any] = {"model": model, "variants": list(variants), "quick": quick, "random_init": random_init,
                              "repeats": repeats,
                              "new_tokens": new_tokens, "environment": metrics.environment(device),
                              "date": time.strftime("%Y-%m-%d"), "notes": []}

    log("cold loads in fresh processes (OS file cache warm)…")
    quantized = [v for v in variants if get_preset(v).quantized]
    cold: dict[str, list[float]] = {v: [] for v in variants}
    reload: dict[str, list[float]] = {v: [] for v in variants}
    pre_cold: dict[str, list[float]] = {v: [] for v in quantized}
    pre_reload: dict[str, list[float]] = {v: [] for v in quantized}
    for v in quantized:
        run_child({"model": model, "variants": [v]}, disk_cache=True)  # makes sure the disk entry exists
    for _ in range(1 if quick else 3):
        for v in variants:
            out = run_child({"model": model, "variants": [v], "reload": True}, disk_cache=False)
            cold[v].append(out["load_seconds"][v])
            reload[v].append(out["reload_seconds"][v])
        for v in quantized:
            out = run_child({"model": model, "variants": [v], "reload": True}, disk_cache=True)
            pre_cold[v].append(out["load_seconds"][v])
            pre_reload[v].append(out["reload_seconds"][v])
    result["cold_load_seconds"] = {v: stat(t) for v, t in cold.items()}
    result["reload_seconds"] = {v: stat(t) for v, t in reload.items()}
    result["notes"].append("cold_load_seconds: the first load in a fresh process, OS file cache warm; it includes "
                           "~2-3 s of one-off imports. reload_seconds: the same variant loaded again in that process "
                           "after unloading it (imports warm): the load itself.")
    if quantized:
        result["prequantized_load_seconds"] = {v: stat(t) for v, t in pre_reload.items()}
        result["prequantized_cold_load_seconds"] = {v: stat(t) for v, t in pre_cold.items()}
        result["prequantized_load_ratio"] = stat([statistics.median(pre_reload[v]) / statistics.median(reload[v])
                                                  for v in quantized])
        result["prequantized_cold_load_ratio"] = stat([statistics.median(pre_cold[v]) / statistics.median(cold[v])
                                                       for v in quantized])
        result["notes"].append("prequantized_load_ratio: a load from the disk cache of quantized weights over a load "
                               "that quantizes the fp32 checkpoint, both with imports warm (reload_seconds); "
                               "prequantized_cold_load_ratio: the same for first loads in fresh processes.")

    log("memory overhead in a fresh process…")
    on_the_fly = run_child({"model": model, "variants": list(variants), "memory": True}, disk_cache=False)
    from_disk = run_child({"model": model, "variants": list(variants), "memory": True}, disk_cache=True)
    for label, m in (("memory", from_disk), ("memory_quantizing_on_load", on_the_fly)):
        footprint = sum(m["footprint_bytes"].values())
        result[label] = {"rss_before_bytes": m["rss_before"], "rss_peak_bytes": m["rss_peak"],
                         "footprints_bytes": footprint, "ratio": (m["rss_peak"] - m["rss_before"]) / footprint,
                         "rss_after_unload_bytes": m["rss_after_unload"],
                         "left_after_unload_bytes": m["rss_after_unload"] - m["rss_before"]}
    result["memory_overhead_ratio"] = result["memory"]["ratio"]

    cache = ModelCache(budget_bytes=64 * 2**30)
    source = catalog.resolve(model)
    entries = {v: cache.get(source, get_preset(v))[0] for v in variants}
    ids = timed_comparison(model, ["fp32"], cache, 1)[1].prompt_token_ids
    hits = []
    for _ in range(20):
        start = time.perf_counter()
        cache.get(source, get_preset(variants[0]))
        hits.append(time.perf_counter() - start)
    result["cache_hit_seconds"] = stat(hits)

    log(f"A/B interleaved, {repeats} repeat(s) of {new_tokens} tokens, bare generate before and after each…")
    bare: dict[str, list[float]] = {v: [] for v in variants}
    stream, nway, nway_threads, metric_times, full_pass_times = [], [], [], [], []
    final = None  # the last interleaved comparison: its per-variant figures go in the report
    for i in range(repeats + 1):
        for v in variants:
            bare[v].append(bare_generate(entries[v].model, ids, new_tokens))
        if i == repeats:
            break
        stream.append(timed_comparison(model, ["fp32"], cache, new_tokens)[0])
        seconds, final = timed_comparison(model, list(variants), cache, new_tokens, "interleave")
        nway.append(seconds)
        nway_threads.append(timed_comparison(model, list(variants), cache, new_tokens, "threads")[0])
        metric_times.append(final.scoring_seconds or 0.0)
        start = time.perf_counter()  # the same metrics without reusing the generations' logits and caches
        COMPUTE.call(quality.score_variants, [entries[v].model for v in variants], ids + final.variants[0].token_ids,
                     len(ids))
        full_pass_times.append(time.perf_counter() - start)
        log(f"repeat {i + 1}/{repeats}: bare {sum(b[-1] for b in bare.values()):.2f} s · n-way interleave "
            f"{nway[-1]:.2f} s · threads {nway_threads[-1]:.2f} s")
    sums = [sum(bare[v][i] for v in variants) for i in range(repeats + 1)]
    result["stream_overhead_ratio"] = ratio(stream, bare["fp32"]) if "fp32" in variants else None
    result["nway_ratio"] = ratio(nway if not device.startswith("cuda") else nway_threads, sums)
    result["nway_ratio_interleave"] = ratio(nway, sums)
    result["nway_ratio_threads"] = ratio(nway_threads, sums)
    result["metrics_seconds"] = stat(metric_times)
    result["metrics_full_pass_seconds"] = stat(full_pass_times)
    result["notes"].append("metrics_seconds: the agreement metrics' share of an n-way comparison (they reuse each "
                           "variant's own logits and KV cache); metrics_full_pass_seconds: the same metrics from "
                           "full teacher-forced passes.")
    result["bare_generate_seconds"] = {v: stat(t) for v, t in bare.items()}
    result["notes"].append("Ratios: each repeat of the path is divided by the mean of the bare generates measured "
                           "just before and just after it (A B A … B A), so a machine that drifts cancels out.")

    bandwidth = COMPUTE.call(read_bandwidth_bytes_per_s) if not device.startswith("cuda") else None
    result["read_bandwidth_bytes_per_s"] = bandwidth
    per_variant = {}
    for row in final.variants:
        tps = row.tokens_per_second
        per_variant[row.name] = {
            "decode_tokens_per_second": tps, "ttft_seconds": row.ttft_seconds, "footprint_bytes": row.footprint_bytes,
            "bare_tokens_per_second": new_tokens / statistics.median(bare[row.name]),
            "bandwidth_fraction": (row.footprint_bytes * tps / bandwidth) if bandwidth and tps else None,
        }
    result["per_variant"] = per_variant

    log("API overhead through a launched app…")
    try:
        base = entries["fp32" if "fp32" in variants else variants[0]].model
        api, bare_per_token = measure_api(model, new_tokens, repeats, lambda: bare_generate(base, ids, new_tokens), log)
        result["api_overhead_ratio"] = ratio(api, bare_per_token)
    except Exception as exc:  # report what was measured; say what was not
        result["api_overhead_ratio"] = None
        result["notes"].append(f"api_overhead_ratio not measured: {exc}")
    cache.unload()
    return result


TARGETS = {"stream_overhead_ratio": 1.05, "api_overhead_ratio": 1.10, "nway_ratio": 1.10, "cache_hit_seconds": 0.05,
           "prequantized_load_ratio": 0.7, "memory_overhead_ratio": 1.3}


def to_markdown(r: dict[str, Any]) -> str:
    def fmt(s):
        if isinstance(s, dict):
            return f"{s['median']:.3f} (min {s['min']:.3f}, max {s['max']:.3f})"
        return "–" if s is None else f"{s:.3f}"

    env = r["environment"]
    lines = [f"Model `{r['model']}`, variants {', '.join(r['variants'])}; {r['repeats']} repeat(s) of {r['new_tokens']} "
             f"new tokens; {env['device']}, {env['threads']} threads, torch {env['torch']}, transformers "
             f"{env['transformers']}, bitsandbytes {env['bitsandbytes']}; {r['date']}.", "",
             "| measure | median (min, max) | target |", "|---|---|---|"]
    for key, target in TARGETS.items():
        value = r.get(key)
        ok = "" if value is None else (" ✓" if (value["median"] if isinstance(value, dict) else value) <= target else " ✗")
        lines.append(f"| `{key}` | {fmt(value)} | ≤ {target}{ok} |")
    lines += [f"| `nway_ratio_interleave` | {fmt(r['nway_ratio_interleave'])} | |",
              f"| `nway_ratio_threads` | {fmt(r['nway_ratio_threads'])} | |",
              f"| `metrics_seconds` | {fmt(r['metrics_seconds'])} | |",
              f"| `metrics_full_pass_seconds` | {fmt(r['metrics_full_pass_seconds'])} | |", "",
              "| variant | cold load s | from disk cache s | decode tok/s | bare tok/s | TTFT s | MiB | bandwidth used |",
              "|---|---|---|---|---|---|---|---|"]
    for name, v in r["per_variant"].items():
        pre = r.get("prequantized_load_seconds", {}).get(name)
        bw = f"{v['bandwidth_fraction']:.0%}" if v["bandwidth_fraction"] else "–"
        lines.append(f"| {name} | {fmt(r['cold_load_seconds'][name])} | {fmt(pre) if pre else '–'} | "
                     f"{v['decode_tokens_per_second'] or 0:.1f} | {v['bare_tokens_per_second']:.1f} | "
                     f"{v['ttft_seconds'] or 0:.3f} | {v['footprint_bytes'] / 2**20:.1f} | {bw} |")
    m, q = r["memory"], r["memory_quantizing_on_load"]
    lines += ["", f"Memory: peak RSS − RSS before ÷ footprints = {m['ratio']:.2f} loading from the disk cache, "
              f"{q['ratio']:.2f} quantizing on load; {m['left_after_unload_bytes'] / 2**20:.0f} MiB left after "
              f"unloading everything. Read bandwidth {(r['read_bandwidth_bytes_per_s'] or 0) / 1e9:.1f} GB/s."]
    lines += [f"- {n}" for n in r["notes"]]
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print(json.dumps(child(sys.argv[2:])))
