"""The benchmark's measuring instruments: each one times a single thing.

`quantplay.bench` composes them into phases and reports. What is timed here is
the path a user takes (a comparison, the API) or the notebook baseline it is
held against (a bare `model.generate`). Loads and memory are measured in fresh
child processes (`python -m quantplay.bench_measure child SPEC`), so one
measurement's allocations never colour another's; a child gets the bench's
config through its environment (model directories, cache directory, disk cache).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from . import catalog, metrics, pretrained
from . import config as qconfig
from .comparison import ComparisonResult, run_comparison
from .compute import COMPUTE
from .config import Config
from .loader import ModelCache
from .presets import get_preset
from .sampling import GenerationSettings

BENCH_PROMPT = "Once upon a time, in a village at the edge of a forest,"
Log = Callable[[str], None]


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
    with torch.no_grad():  # the notebook's generate; quantplay runs in inference_mode, faster (docs/benchmarks.md)
        model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_comparison(model: str, variants: list[str], cache: ModelCache, new_tokens: int, config: Config,
                     schedule: str | None = None) -> tuple[float, ComparisonResult]:
    """A whole comparison of exactly `new_tokens` tokens per variant: (seconds, final frame)."""
    settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    start = time.perf_counter()
    frames = list(run_comparison(model, variants, BENCH_PROMPT, settings, cache=cache, schedule=schedule,
                                 config=config))
    return time.perf_counter() - start, frames[-1]


def sessions_at_once(model: str, prompts: list[str], cache: ModelCache, new_tokens: int, config: Config,
                     at_once: bool) -> tuple[float, list[int]]:
    """fp32 comparisons of `prompts` (exactly `new_tokens` each), one session per prompt: one after another, or
    all at once from their own threads as a class would send them. (seconds, each session's batch_size)."""
    import threading

    settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    sizes = [0] * len(prompts)

    def session(i: int) -> None:
        final = list(run_comparison(model, ["fp32"], prompts[i], settings, cache=cache, config=config))[-1]
        if final.variants[0].status != "done" or final.variants[0].new_tokens != new_tokens:
            raise RuntimeError(f"session {i} ended {final.variants[0].status} after {final.variants[0].new_tokens}")
        sizes[i] = final.variants[0].batch_size

    start = time.perf_counter()
    if at_once:
        errors: list[BaseException] = []
        threads = [threading.Thread(target=lambda i=i: _catching(session, i, errors)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    else:
        for i in range(len(prompts)):
            session(i)
    return time.perf_counter() - start, sizes


def _catching(fn: Callable[[int], None], i: int, errors: list[BaseException]) -> None:
    try:
        fn(i)
    except BaseException as exc:  # re-raised by the caller, on its thread
        errors.append(exc)


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

        cache.footprint_estimate(source, get_preset(spec["variants"][0]), metrics.default_device())
        cache.tokenizer_for(source)
    metrics.release_memory()
    before = metrics.process_rss_bytes()
    first: dict[str, float] = {}
    again: dict[str, float] = {}
    footprints: dict[str, int] = {}
    for name in spec["variants"]:
        passes = (first, again) if spec.get("reload") else (first,)
        for times in passes:
            if times is again:
                cache.unload(preset_name=name)
            start = time.perf_counter()
            with cache.lease(source, get_preset(name), spec.get("device_map", "auto")) as (entry, _):
                times[name] = time.perf_counter() - start
                if times is passes[-1]:  # the variant stays loaded: its pages count in the peak
                    COMPUTE.call(_touch, entry.model)
                    footprints[name] = entry.footprint_bytes
            del entry
    peak = metrics.process_rss_peak_bytes()
    loaded = metrics.process_rss_bytes()
    cache.unload()
    metrics.release_memory()
    return {"load_seconds": first, "reload_seconds": again, "footprint_bytes": footprints, "rss_before": before,
            "rss_peak": peak, "rss_loaded": loaded, "rss_after_unload": metrics.process_rss_bytes()}


def child_env(config: Config, disk_cache: bool = True) -> dict[str, str]:
    """The environment handed to a child (a bench child or the app): this process's, plus the
    settings the bench chose in `config` (model directories for random-init models, cache dir)."""
    env = dict(os.environ)
    env["QUANTPLAY_CACHE_DIR"] = str(config.cache_dir)
    if config.model_dirs:
        env["QUANTPLAY_MODEL_DIRS"] = os.pathsep.join(map(str, config.model_dirs))
    if not disk_cache:
        env["QUANTPLAY_DISK_CACHE_LIMIT"] = "0"
    return env


def run_child(spec: dict[str, Any], config: Config, disk_cache: bool) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "quantplay.bench_measure", "child", json.dumps(spec)],
                         capture_output=True, text=True, env=child_env(config, disk_cache), timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"bench child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_api(model: str, new_tokens: int, repeats: int, bare: Callable[[], float], config: Config, log: Log
                ) -> tuple[list[float], list[float]]:
    """Seconds per generated token through a launched app's /compare (fp32 alone), and the bare
    baseline's, measured around each call (bare, API, bare, …, bare): (api, bare) per-token lists."""
    from gradio_client import Client

    from .appserver import running_app

    env = child_env(config)
    with running_app({k: env[k] for k in ("QUANTPLAY_CACHE_DIR", "QUANTPLAY_MODEL_DIRS") if k in env}) as (url, _):
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


def random_init_model(name: str, config: Config, log: Log) -> tuple[str, Config]:
    """The architecture of `name` with random weights, saved as an allow-listed local model.

    Speed and memory do not depend on the weights' values, so this measures a model
    whose weights cannot be brought along. Returns the directory to use as the model
    name, and `config` with that directory's parent added to its model directories.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .estimator import load_config

    model_config, _ = load_config(name, config)
    root = catalog.cache_dir(config) / "random-init"
    target = root / name.replace("/", "--")
    if not (target / "config.json").is_file():
        log(f"building {name} with random weights (once)…")
        if name in (catalog.BUNDLED_NAME, catalog.BUNDLED_HUB_ID) and catalog.bundled_gguf():
            tokenizer = AutoTokenizer.from_pretrained(catalog.ensure_bundled(config=config))
        else:
            source = catalog.resolve(name, config=config)
            tokenizer = AutoTokenizer.from_pretrained(source.path, **pretrained.where(source))
        torch.manual_seed(0)
        model_config.dtype = "float32"
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        del model
    if root.resolve() not in config.model_dirs:
        config = dataclasses.replace(config, model_dirs=(*config.model_dirs, root.resolve()))
    return str(target), config


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    qconfig.use(qconfig.Config.from_env())  # the environment the bench handed over (child_env)
    print(json.dumps(child(sys.argv[2:])))
