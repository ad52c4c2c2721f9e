"""build_demo(): the Gradio page and the API. Components and wiring only.

Every request, from the page or from `/compare`, goes through `stream_frames`,
which calls `run_comparison`; what the page shows is formatted by `views`.
The components a comparison updates are built once into a `Page`, and
`render()` keys its updates by component, so no positional list has to match
an event's outputs by hand. Settings (request limits, sessions, queue size,
preloading, the server's address) come from the `Config` handed to
`build_demo` and `launch_kwargs`; nothing here reads the environment.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from . import allocator, catalog, metrics, preload, resources, ui_panels, ui_run, views, views_weights
from . import config as qconfig
from .comparison import run_comparison
from .config import Config
from .errors import QuantplayError
from .loader import default_cache
from .presets import PRESETS
from .sampling import GenerationSettings
from .ui_style import CSS

log = logging.getLogger(__name__)
EXAMPLES = [
    "What is the capital of France?",
    "What is 17 + 25? Answer with the number.",
    "Write a Python function that checks whether a number is prime.",
    "Once upon a time, in a village at the edge of a forest,",
    "Quelle est la plus haute montagne d'Europe ?",
]
MEMORY_POLL_SECONDS = 2.0  # the Memory panel's refresh, while it is open
API_FRAME_SECONDS = 0.25  # /compare's default: each frame costs the server and its client CPU (docs/benchmarks.md)


def stream_frames(model: str, variants: list[str], prompt: str, max_new_tokens: int = 64, custom: dict | None = None,
                  seed: int = 0, temperature: float = 0.0, top_p: float = 1.0, chat_template: bool = True,
                  progress=None, frame_seconds: float | None = None, config: Config | None = None,
                  stop: threading.Event | None = None) -> Iterator[dict]:
    """The one code path behind the page and the API: frames as dicts; errors as gr.Error. `stop`, once set,
    ends the streams as "stopped" (see `ui_run`)."""
    config = config or qconfig.current()
    try:
        settings = GenerationSettings.from_request(max_new_tokens=max_new_tokens, temperature=temperature,
                                                   top_p=top_p, seed=seed, chat_template=chat_template)
        frames = run_comparison(model, variants, prompt, settings, custom=custom or None, progress=progress,
                                frame_seconds=frame_seconds, config=config, stop=stop)
        for frame in frames:
            yield frame.to_dict()
    except QuantplayError as exc:
        raise gr.Error(views.esc(exc), print_exception=False) from None
    except Exception as exc:  # never a traceback in the page
        log.exception("comparison failed")
        raise gr.Error(f"Unexpected error ({type(exc).__name__}); the server log has details.",
                       print_exception=False) from None


def presets() -> dict:
    """The named presets and their settings."""
    return {name: p.to_dict() for name, p in PRESETS.items()}


def server_status() -> dict:
    """What the server holds: loaded variants, loads and evictions so far, generations running; the memory
    budget and how it was reached (`budget`: the default device's; `budgets`: RAM as "cpu" and, on a CUDA
    machine, VRAM as "cuda", each with the bytes counted against it), the memory limit and CPUs in force with
    their sources (`limits`)."""
    from .streaming import live_streams

    cache = default_cache()
    return {"entries": cache.entries(), "loads": cache.loads, "budget_bytes": cache.budget_bytes,
            "budget": cache.budget.to_dict(), "limits": resources.describe(),
            "budgets": {pool: dict(budget.to_dict(), resident_bytes=cache.resident_bytes(pool))
                        for pool, budget in cache.budgets.items()},
            "resident_bytes": cache.resident_bytes(), "live_streams": live_streams(),
            "evictions": [f"{key[0][1]}/{key[1].name}" for key in cache.evictions],
            "process_rss_bytes": metrics.process_rss_bytes(), "malloc": allocator.active()}


def register_api(config: Config) -> None:
    """The named endpoints (`/compare`, `/evaluate`, `/models`, `/presets`, `/status`), bound to `config`."""

    def compare(model: str, variants: list[str], prompt: str, max_new_tokens: int = 64, custom: dict | None = None,
                seed: int = 0, temperature: float = 0.0, top_p: float = 1.0, chat_template: bool = True,
                frame_seconds: float = API_FRAME_SECONDS) -> Iterator[dict]:
        """Stream a comparison: frames in quantplay's result schema; the last has done=true.

        variants: preset names (fp32 is always included first). custom: BitsAndBytesConfig fields,
        added as a variant named "custom". temperature 0 means greedy decoding. frame_seconds: at
        most one frame per this many seconds while tokens stream (0.05 to 5; default 0.25).
        """
        yield from stream_frames(model, variants, prompt, max_new_tokens, custom, seed, temperature, top_p,
                                 chat_template, frame_seconds=frame_seconds, config=config)

    def evaluate(model: str, variants: list[str], prompts: list[str] | None = None, max_new_tokens: int = 16) -> dict:
        """Agreement with fp32 over many prompts (default: the ~30 shipped ones), each figure with a 95% bootstrap
        interval over prompts: the report `quantplay evaluate --json` prints (evaluate.py)."""
        from . import evaluate as evaluation

        try:
            return evaluation.run_evaluation(model, ["fp32", *[v for v in variants if v != "fp32"]], prompts,
                                             max_new_tokens=max_new_tokens, config=config)
        except QuantplayError as exc:
            raise gr.Error(views.esc(exc), print_exception=False) from None

    def models() -> list[str]:
        """Model names this server offers (others: any Hub id, when the Hub is reachable)."""
        return catalog.choices(config)

    gr.api(compare, api_name="compare", concurrency_id="hardware", concurrency_limit=config.max_sessions)
    gr.api(evaluate, api_name="evaluate", concurrency_id="hardware", concurrency_limit=config.max_sessions)
    gr.api(models, api_name="models")
    gr.api(presets, api_name="presets")
    gr.api(server_status, api_name="status")


def json_filename(frame: dict, today: datetime.date | None = None) -> str:
    """The download's name: model, date and variants, e.g. quantplay-SmolLM2-135M-Instruct-2026-11-29-fp32-int8.json."""
    model = os.path.basename(str(frame.get("model", "model")).rstrip("/\\")) or "model"
    parts = [model, (today or datetime.date.today()).isoformat(), *(v["name"] for v in frame.get("variants", []))]
    return "quantplay-" + "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", p).strip("_") for p in parts)[:180] + ".json"


def save_json(frame: dict) -> str:
    """The frame as a JSON file named by `json_filename`, alone in a fresh temporary folder (names may repeat)."""
    path = os.path.join(tempfile.mkdtemp(prefix="quantplay-"), json_filename(frame))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(frame, f, indent=2, ensure_ascii=False)
    return path


# -- the page's parts that a comparison updates ------------------------------------
@dataclass(frozen=True)
class Column:
    """One variant's column, and its code block and token view elsewhere on the page."""

    group: gr.Column
    header: gr.Markdown
    text: gr.Textbox
    stats: gr.Markdown
    code: gr.Code
    tokens: gr.HTML | None  # the token view compares a variant with fp32: none in fp32's own column


@dataclass(frozen=True)
class Page:
    status: gr.Markdown
    columns: tuple[Column, ...]
    readings: gr.Markdown
    agreement: gr.Dataframe
    bars: gr.BarPlot
    download: gr.DownloadButton
    weights: gr.HTML

    @property
    def outputs(self) -> list[gr.components.Component]:
        """Every component `render` may update: the outputs of the Compare event."""
        parts = [self.status, self.readings, self.agreement, self.bars, self.download, self.weights]
        for c in self.columns:
            parts += [c.group, c.header, c.text, c.stats, c.code] + ([c.tokens] if c.tokens is not None else [])
        return parts


def render(page: Page, frame: dict, previous: dict | None = None) -> dict[Any, Any]:
    """One frame → updates keyed by component; what is left out keeps its value.

    Parts that did not change since `previous` are left out: re-sending the plot on
    every token makes it flicker (and blank), and code blocks never change mid-run.
    The final frame (done) adds the agreement panel, token views and the JSON download.
    """
    variants = frame["variants"]
    device = frame.get("environment", {}).get("device", "cpu")
    out: dict[Any, Any] = {page.status: views.status_line(frame)}
    for i, column in enumerate(page.columns):
        variant = variants[i] if i < len(variants) else None
        out.update(_column_updates(column, variant, variants[0], device, previous is None, frame["done"]))
    if frame["done"]:
        out[page.readings] = views.readings_markdown(frame)
        out[page.agreement] = views.agreement_rows(frame)
        out[page.download] = gr.update(value=save_json(frame), visible=True)
        out[page.weights] = views_weights.weights_html(frame, bundled=frame.get("model") == catalog.BUNDLED_NAME)
    elif previous is None:
        out[page.download] = gr.update(visible=False)
    if views.loaded_just_now(frame, previous):  # the bar plot once, when every variant has loaded (or failed)
        import pandas as pd

        rows = views.footprint_rows(frame)  # in column order, fp32 first: the plot keeps it (not alphabetical)
        out[page.bars] = gr.update(value=pd.DataFrame(rows, columns=["variant", "MiB", "kind"]).astype({"MiB": float}),
                                   sort=[r["variant"] for r in rows])
    return out


def _column_updates(column: Column, variant: dict | None, reference: dict, device: str, first: bool,
                    done: bool) -> dict[Any, Any]:
    if variant is None:
        out: dict[Any, Any] = {column.group: gr.update(visible=False), column.header: "", column.text: "",
                               column.stats: ""}
    else:
        out = {column.group: gr.update(visible=True), column.header: views.header_markdown(variant, variant is reference),
               column.text: variant["text"], column.stats: views.stats_markdown(variant, reference, device)}
    if first:
        out[column.code] = gr.update(visible=False) if variant is None else gr.update(
            value=variant["code"], label=f"{variant['name']}: reproduce in a notebook", visible=True)
    if done and column.tokens is not None:
        out[column.tokens] = "" if variant is None else views.token_html(variant)
    return out


def memory_panel(preloader: preload.Preloader | None = None) -> tuple[str, list[list[Any]]]:
    cache = default_cache()
    snapshot = metrics.memory_snapshot(metrics.default_device())
    text = views.memory_markdown(snapshot, cache.budget_bytes, cache.resident_bytes(), resources.describe())
    if preloader is not None:
        text += "  \n" + views.esc(preloader.markdown())
    return text, views.cache_rows(cache.entries())


def unload_all(preloader: preload.Preloader | None = None) -> tuple[str, list[list[Any]]]:
    n = default_cache().unload()
    gr.Info(f"Unloaded {n} idle model(s).")
    return memory_panel(preloader)


def _compare_handler(page: Page, config: Config):
    """Compare's handler (`ui_run.run_page`): a request that cannot run says why in the status line only."""

    # the request first: gradio inserts it at its parameter's position, which after *custom would be lost
    def on_compare(request: gr.Request, model_name, picked_names, prompt_text, n, do_sample, temp, p, seed_value,
                   chat_on, *custom):
        if len(picked_names or []) > ui_panels.MAX_PICKED:
            yield {page.status: f"⚠ Pick at most {ui_panels.MAX_PICKED} variants; fp32 is always shown."}
            return
        key = ui_run.session_key(request)
        stop = ui_run.begin(key)

        def frames(progress):
            return stream_frames(model_name, list(picked_names or []), prompt_text, int(n),
                                 ui_panels.custom_fields(*custom), int(seed_value or 0),
                                 float(temp) if do_sample else 0.0, float(p), bool(chat_on),
                                 progress=progress, config=config, stop=stop)

        try:
            yield from ui_run.run_page(frames, lambda frame, previous: render(page, frame, previous), page.status, stop)
        finally:  # done, stopped, or the tab closed (gradio closes this generator): the worker ends too
            stop.set()
            ui_run.end(key, stop)

    return on_compare


def _wire(demo: gr.Blocks, page: Page, controls: ui_panels.Controls, run: gr.Button, stop: gr.Button, memory: tuple,
          config: Config) -> None:
    """The page's events and the API, inside the Blocks being built."""
    panel, live, cached, unload = memory
    preloader = preload.start(config)
    run.click(_compare_handler(page, config), controls.inputs, page.outputs, concurrency_id="hardware",
              concurrency_limit=config.max_sessions, api_visibility="private", show_progress="hidden")
    stop.click(ui_run.request_stop, None, None, queue=False, api_visibility="private")
    # The live memory polls only while its panel is open: 30 idle tabs would otherwise ask 15 times a second.
    timer = gr.Timer(MEMORY_POLL_SECONDS, active=False)
    timer.tick(lambda: memory_panel(preloader), None, [live, cached], show_progress="hidden", queue=False,
               api_name="memory_panel")
    panel.expand(lambda: (*memory_panel(preloader), gr.Timer(active=True)), None, [live, cached, timer],
                 show_progress="hidden", queue=False, api_visibility="private")
    panel.collapse(lambda: gr.Timer(active=False), None, [timer], queue=False, api_visibility="private")
    unload.click(lambda: unload_all(preloader), None, [live, cached], api_name="unload_all")
    register_api(config)


def build_demo(config: Config | None = None) -> gr.Blocks:
    """The page and its API, with `config`'s limits, sessions and queue (default: the process's config)."""
    config = config or qconfig.current()
    with gr.Blocks(title="quantplay: see what quantization does") as demo:
        gr.Markdown("# quantplay\nSee what quantization does to a language model: the fp32 reference and "
                    "bitsandbytes variants answer the same prompt, side by side, with the memory each one uses.",
                    elem_id="intro")
        with gr.Row(elem_id="qp-top"):
            with gr.Column(scale=1, min_width=280, elem_classes=["qp-side"]):
                model, picked, generation, custom = ui_panels.model_panel(config)
                ui_panels.wire_choices(picked, generation)
                prompt = ui_panels.prompt_box(config.limits, EXAMPLES)
                ui_panels.examples_panel(prompt, EXAMPLES)
                ui_panels.presenter_toggle(demo)
                blind = ui_panels.blind_panel()
            with gr.Column(scale=3, elem_classes=["qp-main"]):
                prompt, run, stop, status = ui_panels.prompt_panel(prompt)
                ui_panels.wire_blind(blind, run)
                columns = ui_panels.columns_panel(["fp32", *ui_panels.DEFAULT_PICKED])
                with gr.Row():
                    download = gr.DownloadButton("Download JSON", visible=False, elem_id="download-json")
                readings, agreement, tokens = ui_panels.agreement_panel()
                weights = ui_panels.weights_panel()
                codes = ui_panels.code_panel()
                ui_panels.insight_panels(model, picked)
        bars, panel, live, cached, unload = ui_panels.memory_accordion()
        page = Page(status, tuple(Column(*parts, codes[i], tokens[i - 1] if i else None)
                                  for i, parts in enumerate(columns)), readings, agreement, bars, download, weights)
        _wire(demo, page, ui_panels.Controls(model, picked, prompt, generation, custom), run, stop,
              (panel, live, cached, unload), config)
    demo.queue(max_size=config.queue_size, default_concurrency_limit=config.max_sessions)
    calm_queue_polling(demo)
    return demo


QUEUE_POLL_SECONDS = 0.02  # a queued request waits at most this long to start
PROGRESS_POLL_SECONDS = 0.1  # gr.Progress bars update 10 times a second


def calm_queue_polling(demo: gr.Blocks) -> None:
    """Slow gradio's idle queue polling from every 1 ms (progress: 10 ms) to 20 ms (100 ms).

    On Linux its event loop wakes ~1,100 times a second even with nothing queued, and each
    wake-up takes the GIL and a core from the generation: an idle app's CPU and the API's
    overhead both fall with this (figures in docs/benchmarks.md). These are private attributes
    of gradio's Queue: if a gradio release renames them, this logs a warning and changes
    nothing (a test checks they exist).
    """
    queue = getattr(demo, "_queue", None)
    if queue is None or not all(hasattr(queue, a) for a in ("sleep_when_free", "progress_update_sleep_when_free")):
        log.warning("gradio's queue has no polling intervals to set; it keeps its own (more CPU while idle)")
        return
    queue.sleep_when_free = max(queue.sleep_when_free, QUEUE_POLL_SECONDS)
    queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, PROGRESS_POLL_SECONDS)


def launch_kwargs(config: Config | None = None) -> dict[str, Any]:
    config = config or qconfig.current()
    return {"server_name": config.host, "server_port": config.server_port, "share": config.share,
            "ssr_mode": False, "css": CSS, "footer_links": ["api", "gradio", "settings"]}
