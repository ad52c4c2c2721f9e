"""Page handlers and views as plain functions."""

import pytest

from quantplay import ui, views

REF = {"name": "fp32", "status": "done", "footprint_bytes": 500 * 2**20, "tokens_per_second": 20.0, "load_seconds": 0.3,
       "cache_hit": False, "kv_cache_bytes": 2**20, "ttft_seconds": 0.05, "warnings": [], "settings": {}}


def test_stats_show_footprint_ratio_and_say_when_a_variant_is_slower():
    slow = dict(REF, name="int8", footprint_bytes=200 * 2**20, tokens_per_second=8.0, cache_hit=True)
    text = views.stats_markdown(slow, REF, "cpu")
    assert "200.0 MiB" in text and "2.50× smaller" in text and "cached" in text
    assert "2.5× slower than fp32 on this CPU" in text
    fast = dict(slow, tokens_per_second=25.0)
    assert "slower" not in views.stats_markdown(fast, REF, "cpu")


def test_user_text_is_escaped():
    frame = {"done": False, "warnings": ["<script>alert(1)</script>"],
             "variants": [dict(REF, message="loading <b>x</b>")]}
    line = views.status_line(frame)
    assert "<script>" not in line and "&lt;script&gt;" in line and "&lt;b&gt;" in line
    bad = dict(REF, error="<img src=x onerror=alert(1)>")
    assert "<img" not in views.stats_markdown(bad, REF)


def test_footprint_rows_mark_the_reference():
    frame = {"variants": [REF, dict(REF, name="nf4", footprint_bytes=160 * 2**20), dict(REF, name="x", footprint_bytes=None)]}
    assert views.footprint_rows(frame) == [{"variant": "fp32", "MiB": 500.0, "kind": "fp32 reference"},
                                           {"variant": "nf4", "MiB": 160.0, "kind": "variant"}]


def test_custom_fields_from_the_advanced_accordion():
    assert ui.custom_fields(False, "4-bit", "nf4", "auto", False, "uint8", 6.0, "", False, "auto") is None
    four = ui.custom_fields(True, "4-bit", "fp4", "bfloat16", True, "uint8", 6.0, "lm_head, mlp", False, "auto")
    assert four == {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": True,
                    "bnb_4bit_quant_storage": "uint8", "bnb_4bit_compute_dtype": "bfloat16",
                    "llm_int8_skip_modules": ["lm_head", "mlp"]}
    eight = ui.custom_fields(True, "8-bit", "nf4", "auto", False, "uint8", 4.0, "", True, "float32")
    assert eight == {"load_in_8bit": True, "llm_int8_threshold": 4.0, "llm_int8_enable_fp32_cpu_offload": True,
                     "dtype": "float32"}


def test_errors_become_gr_errors_without_tracebacks(tiny_dir):
    import gradio as gr

    with pytest.raises(gr.Error, match="Unknown preset"):
        next(ui.stream_frames(str(tiny_dir), ["int9"], "Hi"))
    with pytest.raises(gr.Error, match="&lt;b&gt;"):
        next(ui.stream_frames("<b>bold</b>", ["int8"], "Hi"))


def test_stream_frames_and_render_drive_every_output(tiny_dir, monkeypatch, cache):
    monkeypatch.setattr(ui, "run_comparison", lambda *a, **k: __import__("quantplay.compare").compare.run_comparison(
        *a, cache=cache, device_map="cpu", **k))
    frames = list(ui.stream_frames(str(tiny_dir), ["nf4"], "Hi", max_new_tokens=4))
    assert frames[-1]["done"]
    updates = ui.render(frames[-1])
    assert len(updates) == 1 + 4 * ui.MAX_COLUMNS + ui.MAX_COLUMNS + 2 + (ui.MAX_COLUMNS - 1) + 1
    assert updates[0].startswith("Done.")
    assert "nf4" in updates[1 + 4 + 1]  # second column header


def test_the_demo_builds_with_its_api():
    demo = ui.build_demo()
    names = {d.api_name for d in demo.fns.values()}
    assert {"compare", "models", "presets"} <= names
    # gradio's idle queue polling is slowed (see calm_queue_polling): fails loudly if gradio renames the attributes
    assert demo._queue.sleep_when_free == ui.QUEUE_POLL_SECONDS
    assert demo._queue.progress_update_sleep_when_free == ui.PROGRESS_POLL_SECONDS


def test_token_view_escapes_text_and_marks_disagreements():
    scores = [{"token_id": 1, "text": "<b>", "kl": 0.001, "reference_prob": 0.9, "agree": True,
               "fp32_top": [("<b>", 0.9)], "variant_top": [("<b>", 0.9)]},
              {"token_id": 2, "text": " x", "kl": 0.7, "reference_prob": 0.2, "agree": False,
               "fp32_top": [(" x", 0.6)], "variant_top": [(" y", 0.5)]}]
    page = views.token_html({"name": "nf4", "top1_agreement": 0.5, "token_scores": scores})
    assert "<b>" not in page.replace("<b>nf4</b>", "") and "&lt;b&gt;" in page
    assert page.count('class="qp-tok qp-miss"') == 1 and "#ec7014" in page
    assert "nf4 top: &#x27; y&#x27; 50%" in page


def test_agreement_table_and_readings():
    frame = {"variants": [dict(REF, perplexity=1.5, first_divergence_token=None, top1_agreement=None),
                          dict(REF, name="nf4", kl_divergence_mean=0.1812, kl_divergence_max=0.8, top1_agreement=0.66,
                               reference_token_prob_mean=0.7, perplexity=1.9, first_divergence_token=4,
                               reading="nf4 agrees with fp32 on 66% of next-token choices")]}
    rows = views.agreement_rows(frame)
    assert rows[0][:2] == ["fp32", "–"] and rows[0][5] == "1.50"
    assert rows[1] == ["nf4", "0.1812", "0.800", "66%", "70%", "1.90", "token 4"]
    assert "66% of next-token choices" in views.readings_markdown(frame)


def test_insight_handlers():
    from quantplay import ui_insight

    note, rows = ui_insight.on_estimate("meta-llama/Llama-3.1-8B")
    assert "8.03 B parameters" in note and rows[1][0] == "fp16" and rows[1][1] == "14.96"
    import gradio as gr
    with pytest.raises(gr.Error, match="Configs shipped"):
        ui_insight.on_estimate("nobody/nothing")
