"""The page's insight tabs: reference-text scoring and the "will it fit?" estimator.

Wiring only; the numbers come from compare.score_text and estimate.estimate_model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from . import catalog, estimate, views
from .compare import score_text
from .loader import MemoryBudgetError

REFERENCE_TEXT = Path(__file__).resolve().parents[1] / "assets" / "reference_text.txt"
SCORE_HEADERS = ["variant", "perplexity", "KL mean (nats)", "KL max", "top-1 agreement", "p(fp32 token)"]
ESTIMATE_HEADERS = ["preset", "estimated weights (GiB)", "fits?"]


def _as_error(exc: Exception) -> gr.Error:
    return gr.Error(views.esc(exc), print_exception=False)


def on_score_text(model: str, picked: list[str], text: str) -> tuple[str, list[list[Any]]]:
    try:
        result = score_text(model, list(picked or []), text)
    except (ValueError, MemoryBudgetError) as exc:
        raise _as_error(exc) from None
    rows = []
    for v in result["variants"]:
        if v.get("error"):
            rows.append([v["name"], "error: " + v["error"], "", "", "", ""])
            continue
        rows.append([v["name"], f"{v['perplexity']:.2f}", f"{v['kl_divergence_mean']:.4f}", f"{v['kl_divergence_max']:.3f}",
                     f"{v['top1_agreement']:.0%}", f"{v['reference_token_prob_mean']:.0%}"])
    note = f"Scored {result['tokens']} tokens of the text with every variant (one forward pass each)."
    note += "".join(f"  \n**warning:** {views.esc(w)}" for w in result["warnings"])
    return note, rows


def on_estimate(model: str) -> tuple[str, list[list[Any]]]:
    try:
        result = estimate.estimate_model(model)
    except ValueError as exc:
        raise _as_error(exc) from None
    rows = [[preset, f"{size / 2**30:.2f}", "fits" if result["fits"][preset] else "does not fit"]
            for preset, size in result["estimates"].items()]
    where = "VRAM" if result["device"].startswith("cuda") else "RAM"
    note = (f"**{views.esc(result['model'])}**: {result['parameters'] / 1e9:.2f} B parameters "
            f"({views.esc(result['config_source'])}); {where} available now: {result['available_bytes'] / 2**30:.1f} GiB. "
            "Weights only: activations and the KV cache come on top.")
    return note, rows


def reference_tab(model: gr.Dropdown, picked: gr.CheckboxGroup) -> None:
    gr.Markdown("Paste any text: every variant reads it in one forward pass, and each one's perplexity and "
                "divergence from fp32 are measured over the whole text, not only over generated tokens.")
    text = gr.Textbox(REFERENCE_TEXT.read_text(encoding="utf-8").strip(), lines=6, label="Reference text")
    button = gr.Button("Score this text", variant="primary")
    note = gr.Markdown()
    table = gr.Dataframe(headers=SCORE_HEADERS, interactive=False, elem_id="reference-scores")
    button.click(on_score_text, [model, picked, text], [note, table], concurrency_id="hardware")


def estimate_tab() -> None:
    gr.Markdown("Estimate each preset's weight memory from the model's config alone: no weights are downloaded. "
                f"Works offline for: {', '.join(estimate.shipped_configs())}.")
    with gr.Row():
        name = gr.Dropdown(estimate.shipped_configs() + [n for n in catalog.CURATED if n not in estimate.shipped_configs()],
                           value="meta-llama/Llama-3.1-8B", allow_custom_value=True, label="Model")
        button = gr.Button("Estimate", variant="primary")
    note = gr.Markdown()
    table = gr.Dataframe(headers=ESTIMATE_HEADERS, interactive=False, elem_id="estimates")
    button.click(on_estimate, [name], [note, table])
