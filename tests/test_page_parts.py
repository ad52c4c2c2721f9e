"""The page's labels and choices without a browser (issue 13): what the pickers offer, what the columns and
tables say, and the download's name."""

from __future__ import annotations

import datetime

import gradio as gr

from quantplay import catalog, ui, ui_insight, ui_panels, views, views_weights
from quantplay import config as qconfig
from quantplay.presets import PRESETS, QuantPreset

REF = {"name": "fp32", "status": "done", "footprint_bytes": 500 * 2**20, "tokens_per_second": 20.0}


def test_offline_the_model_picker_offers_what_loads_now_first_and_marks_the_rest(tiny_dir):
    test_config = qconfig.current()  # models_root (under tiny_dir) adds a local model directory
    offline = ui_panels.model_choices(test_config, hub_up=False)
    now = catalog.offline_names(test_config)
    assert [value for _, value in offline[:len(now)]] == now and all(label == v for label, v in offline[:len(now)])
    rest = offline[len(now):]
    assert rest and all(label == f"{value} — needs the Hub" for label, value in rest)
    assert sorted(v for _, v in offline) == sorted(catalog.choices(test_config))  # nothing hidden, nothing added
    assert all(label == value for label, value in ui_panels.model_choices(test_config, hub_up=True))


def test_the_variant_picker_keeps_at_most_the_limit(monkeypatch):
    told = []
    monkeypatch.setattr(gr, "Info", told.append)
    assert ui_panels.keep_at_most(["int8", "nf4"], ["int8"]) == ["int8", "nf4"] and not told
    assert ui_panels.keep_at_most(["int8", "nf4", "fp4", "bf16"], ["int8", "nf4", "fp4"]) == ["int8", "nf4", "fp4"]
    assert told and "At most 3" in told[0]
    # the event leaves the widget alone within the limit (an echo could undo a tick made meanwhile)
    assert ui_panels.pick(["nf4"], ["int8", "nf4"]) == (gr.skip(), ["nf4"])
    assert ui_panels.pick(["int8", "nf4", "fp4", "bf16"], ["int8", "nf4", "fp4"]) == (["int8", "nf4", "fp4"],) * 2


def test_sampling_controls_follow_the_sample_box():
    assert [u["interactive"] for u in ui_panels.sampling_controls(True)] == [True] * 3
    assert [u["interactive"] for u in ui_panels.sampling_controls(False)] == [False] * 3
    demo = ui.build_demo()
    labels = {getattr(b, "label", None): b for b in demo.blocks.values()}
    assert labels["temperature (with sample on)"].interactive is False  # off with greedy, the default


def test_the_first_example_is_not_the_default_prompt():
    demo = ui.build_demo()
    prompt = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "prompt")
    examples = next(b for b in demo.blocks.values() if isinstance(b, gr.Dataset))
    assert prompt.value == ui.EXAMPLES[0] and [s[0] for s in examples.samples] == ui.EXAMPLES[1:]


def test_a_custom_column_names_its_settings():
    int8 = QuantPreset.from_fields("custom", {"load_in_8bit": True, "llm_int8_threshold": 1.0}).to_dict()
    assert views.settings_label(int8) == "int8, threshold 1.0"
    dq = QuantPreset.from_fields("custom", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                            "bnb_4bit_use_double_quant": True}).to_dict()
    assert views.settings_label(dq) == "nf4 + double quant"
    header = views.header_markdown({"name": "custom", "status": "done", "settings": int8}, False)
    assert "int8, threshold 1.0" in header and "custom bitsandbytes settings" not in header
    assert views.settings_label(PRESETS["nf4"].to_dict()) == PRESETS["nf4"].description


def test_each_column_opens_its_figures_with_a_summary_row():
    variant = dict(REF, name="nf4", footprint_bytes=200 * 2**20, tokens_per_second=8.0, kl_divergence_mean=0.0421,
                   top1_agreement=0.95, load_seconds=0.5)
    summary = views.stats_markdown(variant, REF).split("\n\n")[0]
    assert summary == "**200.0 MiB** · **2.50× smaller** · 8.0 tokens/s · KL 0.042 · top-1 95%"
    assert views.stats_markdown(REF, REF).split("\n\n")[0] == "**500.0 MiB** · 20.0 tokens/s"  # fp32: no KL to itself


def test_probability_and_perplexity_columns_say_what_they_measure():
    assert "p(fp32's next token)" in views.METRIC_HEADERS and "perplexity on fp32's text" in views.METRIC_HEADERS
    assert "fp32's answer" in views.METRIC_NOTE
    assert "p(the text's next token)" in ui_insight.SCORE_HEADERS and "p(fp32 token)" not in ui_insight.SCORE_HEADERS
    assert "actually comes next in your text" in ui_insight.SCORE_NOTE


def test_tokens_open_their_top_choices_on_focus_not_in_a_title():
    scores = [{"text": " x", "kl": 0.7, "reference_prob": 0.2, "agree": False, "fp32_top": [(" x", 0.6)],
               "variant_top": [(" y", 0.5)]}]
    page = views.token_html({"name": "nf4", "top1_agreement": 0.0, "token_scores": scores})
    assert 'tabindex="0"' in page and 'class="qp-tip"' in page and "title=" not in page
    assert ".qp-tok:focus > .qp-tip" in ui.CSS


def test_the_download_is_named_by_model_date_and_variants(tmp_path):
    frame = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "variants": [{"name": "fp32"}, {"name": "nf4-dq"}]}
    name = ui.json_filename(frame, datetime.date(2026, 11, 29))
    assert name == "quantplay-SmolLM2-135M-Instruct-2026-11-29-fp32-nf4-dq.json"
    assert ui.json_filename({"model": "/models/my model/", "variants": []}, datetime.date(2026, 1, 2)) == \
        "quantplay-my_model-2026-01-02.json"
    assert ui.save_json(frame).endswith("-fp32-nf4-dq.json")


def test_weights_view_names_the_worst_layers_shades_every_layer_and_notes_the_bundled_grid():
    layers = [{"name": f"model.layers.{i}.mlp.down_proj", "layer": i, "module": "mlp.down_proj", "bits": 4,
               "relative_error": 0.05 + i / 100, "max_abs_error": 0.1, "code_shares": None} for i in range(3)]
    outliers = [{"name": "model.layers.0.mlp.up_proj", "layer": 0, "module": "mlp.up_proj", "threshold": 6.0,
                 "in_features": 64, "outlier_columns": 3}]
    frame = {"weights": {"nf4": {"layers": layers, "notes": [], "seconds": 0.1, "worst": ["layer 2 mlp.down_proj: 7.0%"]},
                         "int8": {"layers": [], "notes": [], "seconds": 0.1, "worst": [], "outliers": outliers}}}
    html = views_weights.weights_html(frame, bundled=True)
    assert "nf4: mean relative weight error 6.00% over 3 layers" in html and "layer 2 mlp.down_proj" in html
    assert html.count("<td style=") == 3 + 1  # every nf4 layer and int8's one outlier row, shaded
    assert views_weights.HEAT[-1] in html and "#111" in html  # the largest error gets the darkest shade, with dark text
    assert "Q4_1" in html and "LLM.int8 kept 3 input columns in 16-bit across 1 layers at threshold 6" in html
    assert "Q4_1" not in views_weights.weights_html(frame)
    assert "nothing was quantized" in views_weights.weights_html({"weights": {}})


def test_on_a_cuda_machine_each_column_and_the_cli_table_say_where_it_runs_and_its_vram_peak():
    """The page's column line and the CLI's table for a result as a CUDA machine reports it (views are pure)."""
    GiB = 2**30
    fp32 = {"name": "fp32", "status": "done", "footprint_bytes": 4 * GiB, "device": "cpu",
            "placement": "fp32 · in RAM: does not fit in 3 GiB VRAM beside 1 GiB of quantized variants",
            "cuda_peak_allocated_bytes": None, "device_total_bytes": 24 * GiB, "device_free_bytes": 10 * GiB}
    nf4 = {"name": "nf4", "status": "done", "footprint_bytes": GiB, "device": "cuda:0", "placement": "nf4 · on GPU",
           "cuda_peak_allocated_bytes": GiB + 64 * 2**20, "device_total_bytes": 80 * GiB,
           "device_free_bytes": 60 * GiB}
    assert "fp32 · in RAM: does not fit in 3 GiB VRAM beside 1 GiB of quantized variants · RAM 10.00 GiB free of " \
           "24.00 GiB" in views.stats_markdown(fp32, fp32, "cuda:0")
    assert "nf4 · on GPU · VRAM peak 1.06 GiB · VRAM 60.00 GiB free of 80.00 GiB" in views.stats_markdown(nf4, fp32)
    table = views.text_table({"variants": [fp32, nf4]})
    header, _, row_fp32, row_nf4 = table.splitlines()[:4]
    assert header.split()[-3:] == ["device", "peak", "MiB"] and row_fp32.split()[-2:] == ["cpu", "-"]
    assert row_nf4.split()[-2:] == ["cuda:0", "1088.0"]
    # on a CPU-only machine neither the columns nor the lines appear
    cpu = {k: (None if k in ("device", "placement", "device_total_bytes", "device_free_bytes") else v)
           for k, v in nf4.items()}
    assert "peak" not in views.text_table({"variants": [cpu]}).splitlines()[0]
    assert "on GPU" not in views.stats_markdown(cpu, cpu)
