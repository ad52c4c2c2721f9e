"""build_demo(): the Gradio page and the API. Components and wiring only.

Every request, from the page or from `/compare`, goes through `stream_frames`,
which calls `run_comparison`; what the page shows is formatted by `views`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from . import allocator, catalog, metrics, preload, ui_insight, views
from .compare import Limits, run_comparison
from .loader import MemoryBudgetError, default_cache
from .presets import PRESETS
from .streaming import GenerationSettings
from .validate import env_int

log = logging.getLogger(__name__)
MAX_COLUMNS = 5  # fp32 + 3 presets + the custom variant
MAX_PICKED = 3
ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLES = [
    "What is the capital of France?",
    "What is 17 + 25? Answer with the number.",
    "Write a Python function that checks whether a number is prime.",
    "Once upon a time, in a village at the edge of a forest,",
    "Quelle est la plus haute montagne d'Europe ?",
]
CSS = """
.qp-out textarea { font-size: 1.05rem !important; line-height: 1.45 !important; }
.qp-stats { font-size: 0.95rem; }
.qp-tokens { font-size: 1.05rem; line-height: 2.1; margin-bottom: 0.8rem; }
.qp-tok { color: #111; padding: 1px 2px; border-radius: 3px; white-space: pre-wrap; }
.qp-miss { outline: 2px solid #0072B2; text-decoration: underline; }
.qp-legend { font-size: 0.9rem; }
"""


API_FRAME_SECONDS = 0.25  # /compare's default: each frame costs the server and its client ~3 ms of CPU (measured)


def _session_limit() -> int:
    return max(1, env_int("QUANTPLAY_MAX_SESSIONS", 8))


def _queue_size() -> int:
    return max(1, env_int("QUANTPLAY_QUEUE_SIZE", 32))


def stream_frames(model: str, variants: list[str], prompt: str, max_new_tokens: int = 64, custom: dict | None = None,
                  seed: int = 0, temperature: float = 0.0, top_p: float = 1.0, chat_template: bool = True,
                  progress=None, frame_seconds: float | None = None) -> Iterator[dict]:
    """The one code path behind the page and the API: frames as dicts; errors as gr.Error."""
    try:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=bool(temperature) and temperature > 0,
                                      temperature=temperature if temperature and temperature > 0 else 0.7,
                                      top_p=top_p, seed=seed, chat_template=chat_template)
        frames = run_comparison(model, variants, prompt, settings, custom=custom or None, progress=progress,
                                frame_seconds=frame_seconds)
        for frame in frames:
            yield frame.to_dict()
    except (ValueError, MemoryBudgetError) as exc:
        raise gr.Error(views.esc(exc), print_exception=False) from None
    except Exception as exc:  # never a traceback in the page
        log.exception("comparison failed")
        raise gr.Error(f"Unexpected error ({type(exc).__name__}); the server log has details.",
                       print_exception=False) from None


def compare(model: str, variants: list[str], prompt: str, max_new_tokens: int = 64, custom: dict | None = None,
            seed: int = 0, temperature: float = 0.0, top_p: float = 1.0, chat_template: bool = True,
            frame_seconds: float = API_FRAME_SECONDS) -> Iterator[dict]:
    """Stream a comparison: frames in quantplay's result schema; the last has done=true.

    variants: preset names (fp32 is always included first). custom: BitsAndBytesConfig fields,
    added as a variant named "custom". temperature 0 means greedy decoding. frame_seconds: at
    most one frame per this many seconds while tokens stream (0.05 to 5; default 0.25).
    """
    yield from stream_frames(model, variants, prompt, max_new_tokens, custom, seed, temperature, top_p, chat_template,
                             frame_seconds=frame_seconds)


def models() -> list[str]:
    """Model names this server offers (others: any Hub id, when the Hub is reachable)."""
    return catalog.choices()


def presets() -> dict:
    """The named presets and their settings."""
    return {name: p.to_dict() for name, p in PRESETS.items()}


def server_status() -> dict:
    """What the server holds: loaded variants, loads and evictions so far, generations running."""
    from .streaming import live_streams

    cache = default_cache()
    return {"entries": cache.entries(), "loads": cache.loads, "budget_bytes": cache.budget_bytes,
            "resident_bytes": cache.resident_bytes(), "live_streams": live_streams(),
            "evictions": [f"{key[0][1]}/{key[1].name}" for key in cache.evictions],
            "process_rss_bytes": metrics.process_rss_bytes(), "malloc": allocator.active()}


def custom_fields(enabled: bool, mode: str, quant_type: str, compute_dtype: str, double_quant: bool, storage: str,
                  threshold: float, skip_modules: str, fp32_offload: bool, dtype: str) -> dict | None:
    """The Advanced accordion as BitsAndBytesConfig fields (None when it is off)."""
    if not enabled:
        return None
    fields: dict[str, Any] = {"load_in_8bit": True} if mode == "8-bit" else {
        "load_in_4bit": True, "bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": bool(double_quant),
        "bnb_4bit_quant_storage": storage}
    if mode != "8-bit" and compute_dtype != "auto":
        fields["bnb_4bit_compute_dtype"] = compute_dtype
    if mode == "8-bit":
        fields["llm_int8_threshold"] = threshold
    if skip_modules and skip_modules.strip():
        fields["llm_int8_skip_modules"] = [s.strip() for s in skip_modules.split(",") if s.strip()]
    if fp32_offload:
        fields["llm_int8_enable_fp32_cpu_offload"] = True
    if dtype != "auto":
        fields["dtype"] = dtype
    return fields


def save_json(frame: dict) -> str:
    fd, path = tempfile.mkstemp(prefix="quantplay-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(frame, f, indent=2, ensure_ascii=False)
    return path


def render(frame: dict, previous: dict | None = None) -> list[Any]:
    """One frame → updates for: status, per column (group, header, text, stats), codes, agreement, bars.

    Parts that did not change since `previous` are skipped: re-sending the plot on
    every token makes it flicker (and blank), and code blocks never change mid-run.
    """
    variants = frame["variants"]
    ref = variants[0]
    device = frame.get("environment", {}).get("device", "cpu")
    out: list[Any] = [views.status_line(frame)]
    for i in range(MAX_COLUMNS):
        if i < len(variants):
            v = variants[i]
            out += [gr.update(visible=True), views.header_markdown(v, i == 0), v["text"],
                    views.stats_markdown(v, ref, device)]
        else:
            out += [gr.update(visible=False), "", "", ""]
    first = previous is None
    for i in range(MAX_COLUMNS):
        if not first:
            out.append(gr.skip())
        elif i < len(variants):
            out.append(gr.update(value=variants[i]["code"], label=f"{variants[i]['name']}: reproduce in a notebook",
                                 visible=True))
        else:
            out.append(gr.update(visible=False))
    if frame["done"]:
        out += [views.readings_markdown(frame), views.agreement_rows(frame)]
        out += [views.token_html(variants[i]) if i < len(variants) else "" for i in range(1, MAX_COLUMNS)]
    else:
        out += [gr.skip()] * (2 + MAX_COLUMNS - 1)
    rows = views.footprint_rows(frame)
    loaded = all(v["status"] != "loading" for v in variants)
    was_loaded = previous is not None and all(v["status"] != "loading" for v in previous["variants"])
    if rows and loaded and not was_loaded:  # once, when every variant has loaded (or failed)
        import pandas as pd

        out.append(pd.DataFrame(rows, columns=["variant", "MiB", "kind"]).astype({"MiB": float}))
    else:
        out.append(gr.skip())
    return out


def memory_panel() -> tuple[str, list[list[Any]]]:
    cache = default_cache()
    snapshot = metrics.memory_snapshot(metrics.default_device())
    text = views.memory_markdown(snapshot, cache.budget_bytes, cache.resident_bytes())
    preloader = preload.start_from_env()
    if preloader is not None:
        text += "  \n" + views.esc(preloader.markdown())
    return text, views.cache_rows(cache.entries())


def unload_all() -> tuple[str, list[list[Any]]]:
    n = default_cache().unload()
    gr.Info(f"Unloaded {n} idle model(s).")
    return memory_panel()


def build_demo() -> gr.Blocks:
    limits = Limits.from_env()
    preload.start_from_env()
    with gr.Blocks(title="quantplay: see what quantization does") as demo:
        gr.Markdown("# quantplay\nSee what quantization does to a language model: the fp32 reference and "
                    "bitsandbytes variants answer the same prompt, side by side, with the memory each one uses.")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                model = gr.Dropdown(catalog.choices(), value=catalog.BUNDLED_NAME, allow_custom_value=True,
                                    label="Model", info="pick one, or type a Hugging Face id")
                picked = gr.CheckboxGroup([p for p in PRESETS if p != "fp32"], value=["int8", "nf4"],
                                          label=f"Variants (up to {MAX_PICKED}; fp32 is always the first column)")
                with gr.Accordion("Generation", open=False):
                    max_new = gr.Slider(1, limits.max_new_tokens, value=48, step=1, label="max new tokens")
                    sample = gr.Checkbox(False, label="sample (off: greedy, so differences come from quantization)")
                    temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="top-p")
                    seed = gr.Number(0, precision=0, minimum=0, label="seed")
                    chat = gr.Checkbox(True, label="apply the chat template")
                with gr.Accordion("Advanced: a custom bitsandbytes variant", open=False):
                    c_on = gr.Checkbox(False, label="add a custom variant")
                    c_mode = gr.Radio(["4-bit", "8-bit"], value="4-bit", label="load_in_4bit / load_in_8bit")
                    c_qtype = gr.Radio(["nf4", "fp4"], value="nf4", label="bnb_4bit_quant_type")
                    c_compute = gr.Dropdown(["auto", "float32", "bfloat16", "float16"], value="auto",
                                            label="bnb_4bit_compute_dtype", info="auto: float32 on CPU, bfloat16 on CUDA")
                    c_dq = gr.Checkbox(False, label="bnb_4bit_use_double_quant")
                    c_storage = gr.Dropdown(["uint8", "bfloat16", "float16", "float32"], value="uint8",
                                            label="bnb_4bit_quant_storage")
                    c_threshold = gr.Number(6.0, label="llm_int8_threshold (8-bit)")
                    c_skip = gr.Textbox("", label="llm_int8_skip_modules", placeholder="comma-separated, e.g. lm_head,mlp")
                    c_offload = gr.Checkbox(False, label="llm_int8_enable_fp32_cpu_offload")
                    c_dtype = gr.Dropdown(["auto", "float32", "bfloat16", "float16"], value="auto",
                                          label="dtype of the unquantized modules")
            with gr.Column(scale=3):
                prompt = gr.Textbox(EXAMPLES[0], lines=2, label="Prompt", max_length=limits.max_prompt_chars)
                gr.Examples([[e] for e in EXAMPLES], inputs=[prompt], label="Examples")
                with gr.Row():
                    run = gr.Button("Compare", variant="primary", elem_id="compare-btn")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                status = gr.Markdown("Press **Compare**: the first run loads each variant (seconds).",
                                     elem_id="status")
                columns: list[Any] = []
                with gr.Row(equal_height=False):
                    for i in range(MAX_COLUMNS):
                        with gr.Column(visible=i < 3, min_width=200, elem_classes=["qp-col"]) as group:
                            header = gr.Markdown(elem_id=f"col-head-{i}")
                            text = gr.Textbox(lines=8, max_lines=20, show_label=False, interactive=False,
                                              elem_id=f"col-text-{i}", elem_classes=["qp-out"])
                            stats = gr.Markdown(elem_id=f"col-stats-{i}", elem_classes=["qp-stats"])
                        columns += [group, header, text, stats]
                with gr.Row():
                    download = gr.DownloadButton("Download JSON", visible=False, elem_id="download-json")
                with gr.Accordion("Agreement with fp32", open=True):
                    readings = gr.Markdown("_Agreement metrics appear when a comparison finishes._", elem_id="readings")
                    agreement = gr.Dataframe(headers=views.METRIC_HEADERS, interactive=False, elem_id="agreement")
                    gr.HTML(views.legend_html())
                    tokens = [gr.HTML(elem_id=f"tokens-{i}") for i in range(1, MAX_COLUMNS)]
                with gr.Accordion("Show code", open=False):
                    codes = [gr.Code(language="python", visible=False, buttons=["copy"], interactive=False)
                             for _ in range(MAX_COLUMNS)]
                with gr.Accordion("Reference text: perplexity and KL over any text", open=False):
                    ui_insight.reference_tab(model, picked)
                with gr.Accordion("Will it fit? Memory estimate from the config alone", open=False):
                    ui_insight.estimate_tab()
        with gr.Accordion("Memory", open=True):
            with gr.Row():
                bars = gr.BarPlot(x="variant", y="MiB", color="kind", title="Weight footprint (MiB)",
                                  color_map={"fp32 reference": "#0072B2", "variant": "#E69F00"},
                                  sort=None, height=260, elem_id="footprint-plot")
                with gr.Column():
                    live = gr.Markdown(elem_id="live-memory")
                    cached = gr.Dataframe(headers=["model", "preset", "MiB", "in use"], interactive=False,
                                          label="Loaded in the cache", elem_id="cache-table")
                    unload = gr.Button("Unload idle models", size="sm")
        timer = gr.Timer(2.0)

        def on_compare(model_name, picked_names, prompt_text, n, do_sample, temp, p, seed_value, chat_on, *custom,
                       progress=gr.Progress()):
            if len(picked_names or []) > MAX_PICKED:
                raise gr.Error(f"Pick at most {MAX_PICKED} variants; fp32 is always shown.")
            fields = custom_fields(*custom)
            previous = None
            for frame in stream_frames(model_name, list(picked_names or []), prompt_text, int(n), fields,
                                       int(seed_value or 0), float(temp) if do_sample else 0.0, float(p), bool(chat_on),
                                       progress=lambda f, m: progress(f, desc=m)):
                done = frame["done"]
                yield [*render(frame, previous), gr.update(value=save_json(frame), visible=True) if done
                       else (gr.update(visible=False) if previous is None else gr.skip())]
                previous = frame

        outputs = [status, *columns, *codes, readings, agreement, *tokens, bars, download]
        event = run.click(on_compare, [model, picked, prompt, max_new, sample, temperature, top_p, seed, chat,
                                       c_on, c_mode, c_qtype, c_compute, c_dq, c_storage, c_threshold, c_skip,
                                       c_offload, c_dtype],
                          outputs, concurrency_id="hardware", concurrency_limit=_session_limit(), api_visibility="private")
        stop.click(None, cancels=[event])
        timer.tick(memory_panel, None, [live, cached], show_progress="hidden", queue=False)
        unload.click(unload_all, None, [live, cached])
        demo.load(memory_panel, None, [live, cached])

        gr.api(compare, api_name="compare", concurrency_id="hardware", concurrency_limit=_session_limit())
        gr.api(models, api_name="models")
        gr.api(presets, api_name="presets")
        gr.api(server_status, api_name="status")
    demo.queue(max_size=_queue_size(), default_concurrency_limit=_session_limit())
    calm_queue_polling(demo)
    return demo


QUEUE_POLL_SECONDS = 0.02  # a queued request waits at most this long to start
PROGRESS_POLL_SECONDS = 0.1  # gr.Progress bars update 10 times a second


def calm_queue_polling(demo: gr.Blocks) -> None:
    """Slow gradio's idle queue polling from every 1 ms (progress: 10 ms) to 20 ms (100 ms).

    On Linux its event loop wakes ~1,100 times a second even with nothing queued. Measured
    on this 2-core machine: an idle app used 7% of a core (1.5% after this), and the API's
    cost over a bare generate fell from 1.22x to 1.11x, since each wake-up takes the GIL and
    a core from the generation. These are private attributes of gradio's Queue: if a gradio
    release renames them, this logs a warning and changes nothing (a test checks they exist).
    """
    queue = getattr(demo, "_queue", None)
    if queue is None or not all(hasattr(queue, a) for a in ("sleep_when_free", "progress_update_sleep_when_free")):
        log.warning("gradio's queue has no polling intervals to set; it keeps its own (more CPU while idle)")
        return
    queue.sleep_when_free = max(queue.sleep_when_free, QUEUE_POLL_SECONDS)
    queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, PROGRESS_POLL_SECONDS)


def launch_kwargs() -> dict[str, Any]:
    on_space = bool(os.environ.get("SPACE_ID"))
    return {
        "server_name": os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space else "127.0.0.1"),
        "server_port": int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        "share": False,
        "ssr_mode": False,
        "css": CSS,
        "footer_links": ["api"],
    }
