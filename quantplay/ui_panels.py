"""The page's panels: each function builds one panel's components and returns them.

Layout only: no handlers and no wiring (that is `ui.build_demo`), so a panel can
change shape without touching what a comparison does. `custom_fields` sits next
to the Advanced accordion because it reads that accordion's values in its order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from . import catalog, ui_insight, views
from .config import Config, Limits
from .presets import PRESETS

MAX_COLUMNS = 5  # fp32 + 3 presets + the custom variant
MAX_PICKED = 3
DEFAULT_PICKED = ["int8", "nf4"]
ANSWER_MAX_LINES = 8  # an answer box grows from 2 lines to this, then scrolls: figures stay on a 720 px screen


@dataclass(frozen=True)
class Controls:
    """What a comparison is asked with, in the order `on_compare` takes them."""

    model: gr.Dropdown
    picked: gr.CheckboxGroup
    prompt: gr.Textbox
    generation: tuple  # max new tokens, sample, temperature, top-p, seed, chat template
    custom: tuple  # the Advanced accordion, in `custom_fields` order

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [self.model, self.picked, self.prompt, *self.generation, *self.custom]


NEEDS_HUB = "needs the Hub"


def model_choices(config: Config, hub_up: bool) -> list[tuple[str, str]]:
    """(label, value) pairs: what loads now first; offline, every other name is marked as needing the Hub."""
    every = catalog.choices(config)
    if hub_up:
        return [(name, name) for name in every]
    now = catalog.offline_names(config)
    return [(name, name) for name in now] + [(f"{name} — {NEEDS_HUB}", name) for name in every if name not in now]


def keep_at_most(picked: list[str] | None, previous: list[str] | None = None) -> list[str]:
    """The variant picker's limit, kept in the widget: a box ticked beyond MAX_PICKED is unticked again."""
    picked = list(picked or [])
    if len(picked) <= MAX_PICKED:
        return picked
    gr.Info(f"At most {MAX_PICKED} variants (fp32 is always shown): untick one to pick another.")
    kept = [p for p in picked if p in (previous or [])][:MAX_PICKED]
    return kept or picked[:MAX_PICKED]


def pick(now: list[str] | None, before: list[str] | None) -> tuple:
    """The picker's input event: (what the widget shows, what it had). Within the limit the widget is left
    alone (gr.skip): echoing its value back could untick a box ticked while the round trip was on its way
    (seen in the browser test on a busy machine: a quick untick then tick lost the tick)."""
    kept = keep_at_most(now, before)
    return (gr.skip() if kept == list(now or []) else kept), kept


def sampling_controls(sample: bool) -> tuple:
    """Temperature, top-p and seed apply only while sampling: greyed out otherwise (`ui._wire`)."""
    return tuple(gr.update(interactive=bool(sample)) for _ in range(3))


def model_panel(config: Config) -> tuple[gr.Dropdown, gr.CheckboxGroup, tuple, tuple]:
    """The left column: model, variants, and the Generation and Advanced accordions."""
    hub_up = catalog.hub_reachable()
    model = gr.Dropdown(model_choices(config, hub_up), value=catalog.BUNDLED_NAME, allow_custom_value=True,
                        label="Model", elem_id="model-picker",
                        info="pick one, or type a Hugging Face id" if hub_up else
                        f"the Hub is unreachable: only models on this machine load ({NEEDS_HUB}: the rest)")
    picked = gr.CheckboxGroup([p for p in PRESETS if p != "fp32"], value=DEFAULT_PICKED, elem_id="variant-picker",
                              label=f"Variants (up to {MAX_PICKED}; fp32 is always the first column)")
    with gr.Accordion("Generation", open=False):
        generation = (gr.Slider(1, config.limits.max_new_tokens, value=48, step=1, label="max new tokens"),
                      gr.Checkbox(False, label="sample (off: greedy, so differences come from quantization)",
                                  elem_id="sample-toggle"),
                      gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="temperature (with sample on)",
                                interactive=False),
                      gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="top-p (with sample on)", interactive=False),
                      gr.Number(0, precision=0, minimum=0, label="seed (with sample on)", interactive=False),
                      gr.Checkbox(True, label="apply the chat template"))
    return model, picked, generation, custom_panel()


def wire_choices(picked: gr.CheckboxGroup, generation: tuple) -> None:
    """The left column's own events: the variant limit, and sampling's controls following its checkbox."""
    last = gr.State(list(picked.value or []))
    picked.input(pick, [picked, last], [picked, last],
                 show_progress="hidden", api_visibility="private")  # queued: gr.Info needs the queue
    sample, temperature, top_p, seed = generation[1:5]
    sample.change(sampling_controls, [sample], [temperature, top_p, seed], queue=False, show_progress="hidden",
                  api_visibility="private")


def custom_panel() -> tuple:
    dtypes = ["auto", "float32", "bfloat16", "float16"]
    with gr.Accordion("Advanced: a custom bitsandbytes variant", open=False):
        return (gr.Checkbox(False, label="add a custom variant"),
                gr.Radio(["4-bit", "8-bit"], value="4-bit", label="load_in_4bit / load_in_8bit"),
                gr.Radio(["nf4", "fp4"], value="nf4", label="bnb_4bit_quant_type"),
                gr.Dropdown(dtypes, value="auto", label="bnb_4bit_compute_dtype",
                            info="auto: float32 on CPU, bfloat16 on CUDA"),
                gr.Checkbox(False, label="bnb_4bit_use_double_quant"),
                gr.Dropdown(["uint8", "bfloat16", "float16", "float32"], value="uint8", label="bnb_4bit_quant_storage"),
                gr.Number(6.0, label="llm_int8_threshold (8-bit)"),
                gr.Textbox("", label="llm_int8_skip_modules", placeholder="comma-separated, e.g. lm_head,mlp"),
                gr.Checkbox(False, label="llm_int8_enable_fp32_cpu_offload"),
                gr.Dropdown(dtypes, value="auto", label="dtype of the unquantized modules"))


def custom_fields(enabled: bool, mode: str, quant_type: str, compute_dtype: str, double_quant: bool, storage: str,
                  threshold: float, skip_modules: str, fp32_offload: bool, dtype: str) -> dict | None:
    """The Advanced accordion (`custom_panel`, in its order) as BitsAndBytesConfig fields; None when it is off."""
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


PRESENTER_JS = "(on) => { document.body.classList.toggle('qp-presenter', !!on); return []; }"
PRESENTER_FROM_URL = ("() => { const on = new URLSearchParams(location.search).get('presenter') === '1';"
                      " document.body.classList.toggle('qp-presenter', on); return on; }")


def presenter_toggle(demo: gr.Blocks) -> gr.Checkbox:
    """Large text for a projector: a class on <body> (CSS in `ui.CSS`), from this box or `?presenter=1`."""
    box = gr.Checkbox(False, label="presenter view (large text)", elem_id="presenter-toggle")
    box.change(None, [box], None, js=PRESENTER_JS, api_visibility="private")
    demo.load(None, None, [box], js=PRESENTER_FROM_URL, api_visibility="private")
    return box


# Blind mode (issue 15): all in the browser, so the API and the CLI never see it. On Compare the columns get a
# random order (CSS `order` in their flex row) and letters; names and every figure stay hidden until Reveal.
BLIND_LETTERS = "ABCDE"
BLIND_JS = """(on) => {
  const cols = () => [...Array(5).keys()].map(i => document.querySelector('#col-head-' + i))
    .map(h => h && h.closest('.qp-col')).filter(Boolean);
  window.qpBlindLetters = () => {
    const shown = cols().filter(c => c.offsetParent !== null)
      .sort((a, b) => (+a.style.order || 0) - (+b.style.order || 0));
    shown.forEach((c, k) => c.dataset.letter = 'ABCDE'[k]);
  };
  window.qpBlindShuffle = () => {
    const order = [...Array(5).keys()];
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1)); [order[i], order[j]] = [order[j], order[i]];
    }
    cols().forEach((c, i) => c.style.order = order[i]);
    document.body.classList.remove('qp-revealed');
    const verdict = document.querySelector('#blind-verdict');
    if (verdict) verdict.innerHTML = '';
    window.qpBlindLetters();
  };
  document.body.classList.toggle('qp-blind', !!on);
  clearInterval(window.qpBlindTimer);
  if (on) { window.qpBlindShuffle(); window.qpBlindTimer = setInterval(window.qpBlindLetters, 300); }
  else { cols().forEach(c => { c.style.order = ''; delete c.dataset.letter; }); document.body.classList.remove('qp-revealed'); }
  return [];
}"""
BLIND_SHUFFLE_JS = ("() => { if (document.body.classList.contains('qp-blind') && window.qpBlindShuffle) "
                    "window.qpBlindShuffle(); return []; }")
BLIND_REVEAL_JS = """(guess) => {
  if (!document.body.classList.contains('qp-blind')) return [];
  window.qpBlindLetters();
  const named = [...Array(5).keys()].map(i => document.querySelector('#col-head-' + i))
    .filter(h => h && h.closest('.qp-col').offsetParent !== null)
    .map((h, i) => ({letter: h.closest('.qp-col').dataset.letter, name: h.textContent.trim().split(/\\s/)[0], fp32: i === 0}))
    .sort((a, b) => a.letter.localeCompare(b.letter));
  const truth = named.find(n => n.fp32);
  const verdict = document.querySelector('#blind-verdict');
  const right = guess === truth.letter;
  const said = guess ? `You picked ${guess}: ${right ? 'right' : 'not fp32'}. ` : 'No guess. ';
  verdict.innerText = said + `fp32 was column ${truth.letter}. ` + named.map(n => `${n.letter}: ${n.name}`).join(' · ');
  document.body.classList.add('qp-revealed');
  return [];
}"""


def blind_panel() -> tuple[gr.Checkbox, gr.Radio, gr.Button]:
    """Blind mode for a class: shuffle the columns, hide their names and figures; guess fp32, then Reveal.
    In the side column (the answers keep their place on a projector); `wire_blind` connects it to Compare."""
    with gr.Accordion("Blind mode: which column is fp32?", open=False, elem_id="blind-panel"):
        box = gr.Checkbox(False, label="blind: shuffle the columns and hide names and figures until Reveal",
                          elem_id="blind-toggle")
        guess = gr.Radio(list(BLIND_LETTERS), label="Which column is fp32?", elem_id="blind-guess")
        reveal = gr.Button("Reveal", size="sm", elem_id="blind-reveal")
        gr.HTML("", elem_id="blind-verdict")
    return box, guess, reveal


def wire_blind(blind: tuple[gr.Checkbox, gr.Radio, gr.Button], run: gr.Button) -> None:
    box, guess, reveal = blind
    box.change(None, [box], None, js=BLIND_JS, api_visibility="private")
    run.click(None, None, None, js=BLIND_SHUFFLE_JS, api_visibility="private", queue=False)
    reveal.click(None, [guess], None, js=BLIND_REVEAL_JS, api_visibility="private", queue=False)


def prompt_box(limits: Limits, examples: list[str]) -> gr.Textbox:
    """The prompt, built before it is placed (`prompt_panel`) so that `examples_panel` can sit elsewhere."""
    return gr.Textbox(examples[0], lines=2, label="Prompt", max_length=limits.max_prompt_chars, elem_id="prompt",
                      render=False)


def examples_panel(prompt: gr.Textbox, examples: list[str]) -> None:
    """The example prompts, in the left column so the answers and their figures fit one screen.
    The default prompt is the first of `examples`; the buttons offer the others, so each click shows a change."""
    gr.Examples([[e] for e in examples[1:]], inputs=[prompt], label="Examples", elem_id="examples")


def prompt_panel(prompt: gr.Textbox) -> tuple[gr.Textbox, gr.Button, gr.Button, gr.Markdown]:
    """Prompt, Compare and Stop, and the status line: one block, first on a phone (`ui_style.CSS`)."""
    with gr.Column(elem_classes=["qp-prompt-area"]):
        prompt.render()
        with gr.Row():
            run = gr.Button("Compare", variant="primary", elem_id="compare-btn")
            stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
        status = gr.Markdown("Press **Compare**: the first run loads each variant (seconds).", elem_id="status")
    return prompt, run, stop, status


def columns_panel(first: list[str] | None = None) -> list[tuple[gr.Column, gr.Markdown, gr.Textbox, gr.Markdown]]:
    """One column per variant (`first`: the names shown before any run). An answer box starts two lines tall
    and grows with its text, so the figures under it stay on screen for a short answer (a projector)."""
    first = first or []
    columns = []
    with gr.Row(equal_height=False, elem_id="columns", elem_classes=["qp-columns"]):
        for i in range(MAX_COLUMNS):
            name = first[i] if i < len(first) else f"variant {i}"
            with gr.Column(visible=i < 3, min_width=200, elem_classes=["qp-col"]) as group:
                columns.append((group, gr.Markdown(f"### {name}", elem_id=f"col-head-{i}", elem_classes=["qp-head"]),
                                gr.Textbox(lines=2, max_lines=ANSWER_MAX_LINES, label=f"{name}'s answer", show_label=False,
                                           interactive=False, autoscroll=True, container=False,
                                           placeholder=f"{name}'s answer appears here after Compare",
                                           elem_id=f"col-text-{i}", elem_classes=["qp-out"]),
                                gr.Markdown(elem_id=f"col-stats-{i}", elem_classes=["qp-stats"])))
    return columns


def agreement_panel() -> tuple[gr.Markdown, gr.Dataframe, list[gr.HTML]]:
    with gr.Accordion("Agreement with fp32", open=True):
        readings = gr.Markdown("_Agreement metrics appear when a comparison finishes._", elem_id="readings")
        agreement = gr.Dataframe(headers=views.METRIC_HEADERS, interactive=False, elem_id="agreement",
                                 elem_classes=["qp-table"])
        gr.Markdown(views.METRIC_NOTE, elem_id="metric-note", elem_classes=["qp-note"])
        gr.HTML(views.legend_html())
        tokens = [gr.HTML(elem_id=f"tokens-{i}") for i in range(1, MAX_COLUMNS)]
    return readings, agreement, tokens


def weights_panel() -> gr.HTML:
    """Where each quantized variant loses most (issue 15): filled by the final frame."""
    with gr.Accordion("Inside the weights: which layers lose most, what LLM.int8 keeps", open=False,
                      elem_id="weights-panel"):
        return gr.HTML("<p><em>Per-layer weight errors appear when a comparison finishes.</em></p>",
                       elem_id="weights-view")


def code_panel() -> list[gr.Code]:
    with gr.Accordion("Show code", open=False, elem_id="code-panel"):
        return [gr.Code(language="python", visible=False, buttons=["copy"], interactive=False)
                for _ in range(MAX_COLUMNS)]


def insight_panels(model: gr.Dropdown, picked: gr.CheckboxGroup) -> None:
    with gr.Accordion("Reference text: perplexity and KL over any text", open=False):
        ui_insight.reference_tab(model, picked)
    with gr.Accordion("Evaluate: agreement over many prompts, with error bars", open=False, elem_id="evaluate-panel"):
        ui_insight.evaluate_tab(model, picked)
    with gr.Accordion("Will it fit? Memory estimate from the config alone", open=False):
        ui_insight.estimate_tab()


def memory_accordion() -> tuple[gr.BarPlot, gr.Accordion, gr.Markdown, gr.Dataframe, gr.Button]:
    """The last comparison's weight footprints, and the server's live memory in a panel that starts closed:
    its timer polls only while it is open (`ui._wire`), so idle tabs cost the server nothing."""
    with gr.Accordion("Weight footprint", open=True):
        bars = gr.BarPlot(x="variant", y="MiB", color="kind", title="Weight footprint (MiB)",
                          color_map={"fp32 reference": "#0072B2", "variant": "#E69F00"},
                          sort=None, height=260, elem_id="footprint-plot")
    with gr.Accordion("Memory: live, and the models loaded (refreshed every 2 s while open)", open=False,
                      elem_id="memory-panel") as panel, gr.Row():
        live = gr.Markdown(elem_id="live-memory")
        with gr.Column():
            cached = gr.Dataframe(headers=["model", "preset", "MiB", "in use"], interactive=False,
                                  label="Loaded in the cache", elem_id="cache-table")
            unload = gr.Button("Unload idle models", size="sm")
    return bars, panel, live, cached, unload
