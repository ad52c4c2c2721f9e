"""`quantplay loadtest`: N gradio_client sessions press Compare at once against a running app.

Why: issue 14 found 8 people on the same example getting 0.96x one person's token
throughput, and nothing measured it but a hand-written script. This drives the public
`/compare` endpoint as N users would (one `gradio_client.Client` each, all submitted
at the same moment after their connections are made) and reports what they saw:
aggregate generated tokens per second of wall time, p50/p95 time to first token and to
the final frame, the sessions' `batch_size` (how many read one shared generation), and
failures. `--one-by-one` runs the same sessions one after another instead: the lone
baseline for exactly those prompts (one prompt alone may stop early at its EOS).
The figures on this machine are in docs/benchmarks.md ("A classroom at once").
It knows nothing about the server's internals: only the API's result schema.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

PROMPTS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Give a synonym for happy.",
    "Why is the sky blue?",
    "Name a planet in our solar system.",
    "What do bees make?",
)


def prompts_for(sessions: int, same_prompt: bool) -> list[str]:
    """The first prompt for every session, or a different prompt each (numbered once the list runs out)."""
    if same_prompt:
        return [PROMPTS[0]] * sessions
    return [PROMPTS[i % len(PROMPTS)] + (f" ({i // len(PROMPTS) + 1})" if i >= len(PROMPTS) else "")
            for i in range(sessions)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def _session(client: Any, request: dict[str, Any], go: threading.Event, out: dict[str, Any]) -> None:
    """One user: wait for the common start, submit, time the first token and the final frame."""
    go.wait()
    start = time.perf_counter()
    try:
        final = None
        for frame in client.submit(**request, api_name="/compare"):
            if "ttft" not in out and any(v.get("new_tokens") for v in frame["variants"]):
                out["ttft"] = time.perf_counter() - start
            final = frame
        out["seconds"] = time.perf_counter() - start
        if final is None or not final.get("done"):
            raise RuntimeError("the stream ended without a final frame")
        bad = [f"{v['name']}: {v.get('error') or v['status']}" for v in final["variants"] if v["status"] != "done"]
        if bad:
            raise RuntimeError("; ".join(bad))
        out["tokens"] = sum(v["new_tokens"] for v in final["variants"])
        out["batch_size"] = max(v.get("batch_size", 1) for v in final["variants"])
    except Exception as exc:  # a failure is a figure here, not a crash
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"


def run_loadtest(url: str, sessions: int, *, same_prompt: bool = False, variants: Sequence[str] = ("fp32", "nf4"),
                 max_new_tokens: int = 48, model: str = "SmolLM2-135M-Instruct", timeout: float = 1800.0,
                 one_by_one: bool = False, client_factory: Any = None) -> dict[str, Any]:
    """Run `sessions` comparisons at once against the app at `url`; return the report (see the module doc).
    With `one_by_one` the same sessions run one after another, each alone: the baseline for the same prompts."""
    if sessions < 1:
        raise ValueError("--sessions must be at least 1.")
    if client_factory is None:
        from gradio_client import Client

        def client_factory(u):
            return Client(u, verbose=False)

    clients = [client_factory(url) for _ in range(sessions)]  # connections made before the clock starts
    go = threading.Event()
    outs: list[dict[str, Any]] = [{} for _ in range(sessions)]
    threads = [threading.Thread(target=_session, daemon=True, args=(client, {
        "model": model, "variants": list(variants), "prompt": prompt, "max_new_tokens": max_new_tokens}, go, out))
        for client, prompt, out in zip(clients, prompts_for(sessions, same_prompt), outs)]
    start = time.perf_counter()
    if one_by_one:
        go.set()
        for thread in threads:
            thread.start()
            thread.join(max(0.0, timeout - (time.perf_counter() - start)))
    else:
        for thread in threads:
            thread.start()
        start = time.perf_counter()
        go.set()
        for thread in threads:
            thread.join(max(0.0, timeout - (time.perf_counter() - start)))
    wall = time.perf_counter() - start
    return report(outs, wall, sessions=sessions, same_prompt=same_prompt, variants=list(variants),
                  max_new_tokens=max_new_tokens, model=model, one_by_one=one_by_one)


def report(outs: list[dict[str, Any]], wall: float, **request: Any) -> dict[str, Any]:
    """The JSON the command prints, from each session's record and the wall time of the whole run."""
    done = [o for o in outs if "tokens" in o]
    failures = [o.get("error", "did not finish in time") for o in outs if "tokens" not in o]
    tokens = sum(o["tokens"] for o in done)
    ttft = [o["ttft"] for o in done if "ttft" in o]
    seconds = [o["seconds"] for o in done]
    return {**request, "wall_seconds": round(wall, 3), "completed": len(done), "failures": failures,
            "tokens": tokens, "aggregate_tokens_per_second": round(tokens / wall, 2) if wall > 0 else None,
            "ttft_seconds": {"p50": percentile(ttft, 50), "p95": percentile(ttft, 95), "max": max(ttft, default=None)},
            "finish_seconds": {"p50": percentile(seconds, 50), "p95": percentile(seconds, 95),
                               "max": max(seconds, default=None)},
            "batch_sizes": sorted({o["batch_size"] for o in done})}
