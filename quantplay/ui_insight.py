"""The page's insight tabs: reference-text scoring, evaluation over many prompts, the "will it fit?" estimator.

Wiring only; the numbers come from reference.score_text, evaluate.run_evaluation and estimator.estimate_model.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import resources
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from . import catalog, estimator, evaluate, ui_run, views
from .errors import QuantplayError
from .reference import score_text

REFERENCE_TEXT = resources.files("quantplay") / "data" / "reference_text.txt"  # inside the package: found when installed
SCORE_HEADERS = ["variant", "perplexity on the text", "KL mean (nats)", "KL max", "top-1 agreement",
                 "p(the text's next token)"]
SCORE_NOTE = ("_perplexity on the text_: how surprised each variant is by your text (lower: it predicted it "
              "better).  \n_p(the text's next token)_: the probability it gives the token that actually comes "
              "next in your text (mean), not fp32's choice.")
ESTIMATE_HEADERS = ["preset", "estimated weights (GiB)", "fits?"]


def _as_error(exc: Exception) -> gr.Error:
    return gr.Error(views.esc(exc), print_exception=False)


def on_score_text(model: str, picked: list[str], text: str) -> tuple[str, list[list[Any]]]:
    try:
        result = score_text(model, list(picked or []), text)
    except QuantplayError as exc:
        raise _as_error(exc) from None
    rows = []
    for v in result.variants:
        if v.error:
            rows.append([v.name, "error: " + v.error, "", "", "", ""])
            continue
        rows.append([v.name, f"{v.perplexity:.2f}", f"{v.kl_divergence_mean:.4f}", f"{v.kl_divergence_max:.3f}",
                     f"{v.top1_agreement:.0%}", f"{v.reference_token_prob_mean:.0%}"])
    note = f"Scored {result.tokens} tokens of the text with every variant (one forward pass each)."
    note += "".join(f"  \n**warning:** {views.esc(w)}" for w in result.warnings)
    return note, rows


EVALUATE_HEADERS = ["variant"] + [evaluate.LABELS[k] for k in evaluate.STATISTICS]
EVALUATE_NOTE = ("Each cell: the value over every scored token, and in brackets its 95% interval from a bootstrap "
                 "over prompts. _RMS Δp_: how much the probability of fp32's token moves; _PPL ratio_: the "
                 "variant's perplexity on fp32's continuation over fp32's own.")


def evaluate_key(request: gr.Request | None) -> str:
    """The evaluation's own stop key: its Stop leaves a comparison of the same session running."""
    return ui_run.session_key(request) + "/evaluate"


def on_evaluate(model: str, picked: list[str], prompts: str, tokens: float, request: gr.Request = None,
                progress=gr.Progress()) -> tuple[str, list[list[str]], pd.DataFrame, Any, Any]:
    key = evaluate_key(request)
    flag = ui_run.begin(key)
    try:
        report = evaluate.run_evaluation(model, ["fp32", *[p for p in picked or [] if p != "fp32"]],
                                         evaluate.read_prompts(prompts or ""), max_new_tokens=int(tokens or 16),
                                         stop=flag, progress=lambda f, m: progress(f, desc=m))
    except QuantplayError as exc:
        raise _as_error(exc) from None
    finally:
        ui_run.end(key, flag)
    folder = tempfile.mkdtemp(prefix="quantplay-evaluate-")
    csv_path, json_path = os.path.join(folder, "quantplay-evaluate.csv"), os.path.join(folder, "quantplay-evaluate.json")
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write(evaluate.to_csv(report))
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return (evaluate_summary(report), evaluate.table_rows(report), kl_curve(report),
            gr.update(value=csv_path, visible=True), gr.update(value=json_path, visible=True))


def on_evaluate_stop(request: gr.Request = None) -> None:
    ui_run.request_stop_key(evaluate_key(request))


def evaluate_summary(report: dict[str, Any]) -> str:
    head = (f"**{views.esc(report['model'])}**: {report['prompts_scored']} of {report['prompts']} prompts scored, "
            f"{report['tokens']} tokens of fp32's continuation, in {report['seconds']:.0f} s.")
    if report["stopped"]:
        head += " **Stopped**: the figures cover the prompts scored before Stop."
    points = "; ".join(f"{p['quant']}: mean KL {p['kl_mean']}, same top token {p['same_top']:.1%}"
                       for p in report["reference_points"])
    return "  \n".join([head, *map(views.esc, report["notes"]), f"_{views.esc(report['reference_note'])}_ {points}."])


def kl_curve(report: dict[str, Any]) -> pd.DataFrame:
    """Each variant's KL at every percentile of its tokens: the distribution the table summarizes."""
    rows = []
    for name, values in report["kl_values"].items():
        ordered = np.sort(np.asarray(values, dtype=float))
        for q in range(0, 101, 2):
            rows.append({"percentile": q, "KL (nats)": float(np.percentile(ordered, q)), "variant": name})
    return pd.DataFrame(rows)


def evaluate_tab(model: gr.Dropdown, picked: gr.CheckboxGroup) -> None:
    gr.Markdown("fp32 continues every prompt; every variant ticked above then reads that continuation, and its "
                "agreement with fp32 is summarized over all of them, with error bars. Edit the prompts (one per "
                "line) or keep the shipped set.")
    with gr.Row():
        prompts = gr.Textbox("\n".join(evaluate.shipped_prompts()), lines=6, max_lines=12, label="Prompts, one per line",
                             elem_id="evaluate-prompts")
        with gr.Column(min_width=200):
            tokens = gr.Slider(4, 64, value=16, step=4, label="Tokens of fp32 per prompt")
            button = gr.Button("Evaluate", variant="primary", elem_id="evaluate-btn")
            stop = gr.Button("Stop", elem_id="evaluate-stop")
    note = gr.Markdown(elem_id="evaluate-note")
    table = gr.Dataframe(headers=EVALUATE_HEADERS, interactive=False, wrap=True, elem_id="evaluate-table")
    curve = gr.LinePlot(x="percentile", y="KL (nats)", color="variant", title="KL per token, by percentile",
                        height=260, elem_id="evaluate-plot")
    with gr.Row():
        csv_file = gr.DownloadButton("Download CSV", visible=False, elem_id="evaluate-csv")
        json_file = gr.DownloadButton("Download JSON", visible=False, elem_id="evaluate-json")
    gr.Markdown(EVALUATE_NOTE, elem_classes=["qp-note"])
    button.click(on_evaluate, [model, picked, prompts, tokens], [note, table, curve, csv_file, json_file],
                 concurrency_id="hardware", api_visibility="private")
    stop.click(on_evaluate_stop, None, None, queue=False, api_visibility="private")


def on_estimate(model: str) -> tuple[str, list[list[Any]]]:
    try:
        result = estimator.estimate_model(model)
    except QuantplayError as exc:
        raise _as_error(exc) from None
    rows = [[preset, f"{size / 2**30:.2f}", "fits" if result.fits[preset] else "does not fit"]
            for preset, size in result.estimates.items()]
    where = "VRAM" if result.device.startswith("cuda") else "RAM"
    note = (f"**{views.esc(result.model)}**: {result.parameters / 1e9:.2f} B parameters "
            f"({views.esc(result.config_source)}); {where} available now: {result.available_bytes / 2**30:.1f} GiB. "
            "Weights only: activations and the KV cache come on top.")
    return note, rows


def reference_tab(model: gr.Dropdown, picked: gr.CheckboxGroup) -> None:
    gr.Markdown("Paste any text: every variant reads it in one forward pass, and each one's perplexity and "
                "divergence from fp32 are measured over the whole text, not only over generated tokens.")
    text = gr.Textbox(REFERENCE_TEXT.read_text(encoding="utf-8").strip(), lines=6, label="Reference text")
    button = gr.Button("Score this text", variant="primary")
    note = gr.Markdown()
    table = gr.Dataframe(headers=SCORE_HEADERS, interactive=False, elem_id="reference-scores")
    gr.Markdown(SCORE_NOTE, elem_classes=["qp-note"])
    button.click(on_score_text, [model, picked, text], [note, table], concurrency_id="hardware")


def estimate_tab() -> None:
    gr.Markdown("Estimate each preset's weight memory from the model's config alone: no weights are downloaded. "
                f"Works offline for: {', '.join(estimator.shipped_configs())}.")
    with gr.Row():
        name = gr.Dropdown(estimator.shipped_configs() + [n for n in catalog.CURATED if n not in estimator.shipped_configs()],
                           value="meta-llama/Llama-3.1-8B", allow_custom_value=True, label="Model")
        button = gr.Button("Estimate", variant="primary")
    note = gr.Markdown()
    table = gr.Dataframe(headers=ESTIMATE_HEADERS, interactive=False, elem_id="estimates")
    button.click(on_estimate, [name], [note, table])
