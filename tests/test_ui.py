"""Page handlers and views as plain functions."""

import json
import threading
import time

import pytest

from quantplay import ui, ui_panels, views

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
    assert ui_panels.custom_fields(False, "4-bit", "nf4", "auto", False, "uint8", 6.0, "", False, "auto") is None
    four = ui_panels.custom_fields(True, "4-bit", "fp4", "bfloat16", True, "uint8", 6.0, "lm_head, mlp", False, "auto")
    assert four == {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": True,
                    "bnb_4bit_quant_storage": "uint8", "bnb_4bit_compute_dtype": "bfloat16",
                    "llm_int8_skip_modules": ["lm_head", "mlp"]}
    eight = ui_panels.custom_fields(True, "8-bit", "nf4", "auto", False, "uint8", 4.0, "", True, "float32")
    assert eight == {"load_in_8bit": True, "llm_int8_threshold": 4.0, "llm_int8_enable_fp32_cpu_offload": True,
                     "dtype": "float32"}


def test_errors_become_gr_errors_without_tracebacks(tiny_dir, monkeypatch):
    import gradio as gr

    from quantplay.errors import MemoryBudgetError

    with pytest.raises(gr.Error, match="Unknown preset"):
        next(ui.stream_frames(str(tiny_dir), ["int9"], "Hi"))
    with pytest.raises(gr.Error, match="&lt;b&gt;"):
        next(ui.stream_frames("<b>bold</b>", ["int8"], "Hi"))

    def refuse(*args, **kwargs):
        raise MemoryBudgetError("These 3 variants need about 900 MiB together")

    monkeypatch.setattr(ui, "run_comparison", refuse)
    with pytest.raises(gr.Error, match="need about 900 MiB"):
        next(ui.stream_frames(str(tiny_dir), ["int8"], "Hi"))

    def crash(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(ui, "run_comparison", crash)
    with pytest.raises(gr.Error, match=r"Unexpected error \(RuntimeError\)") as info:
        next(ui.stream_frames(str(tiny_dir), ["int8"], "Hi"))
    assert "secret internals" not in info.value.message


def a_page():
    """A Page of fresh components, as build_demo assembles one."""
    import gradio as gr

    with gr.Blocks():
        columns = tuple(ui.Column(gr.Column(), gr.Markdown(), gr.Textbox(), gr.Markdown(), gr.Code(),
                                  gr.HTML() if i else None) for i in range(ui_panels.MAX_COLUMNS))
        return ui.Page(gr.Markdown(), columns, gr.Markdown(), gr.Dataframe(), gr.BarPlot(), gr.DownloadButton(), gr.HTML())


def test_render_keys_every_update_by_component(tiny_dir, monkeypatch, cache):
    from quantplay import comparison

    monkeypatch.setattr(ui, "run_comparison", lambda *a, **k: comparison.run_comparison(
        *a, cache=cache, device_map="cpu", **k))
    frames = list(ui.stream_frames(str(tiny_dir), ["nf4"], "Hi", max_new_tokens=4))
    assert frames[-1]["done"] and not frames[0]["done"]
    page = a_page()
    cols = page.columns
    first = ui.render(page, frames[0])
    assert set(first) <= set(page.outputs)
    assert first[page.status].startswith("Loading the models…")
    assert first[cols[0].code]["visible"] and "fp32" in first[cols[0].code]["label"]
    assert first[cols[2].code] == {"__type__": "update", "visible": False}
    assert first[cols[2].group] == {"__type__": "update", "visible": False}
    assert first[page.download] == {"__type__": "update", "visible": False}
    assert page.readings not in first and cols[1].tokens not in first  # agreement only when done

    final = ui.render(page, frames[-1], frames[-2])
    assert final[page.status].startswith("Done.")
    assert "nf4" in final[cols[1].header] and "reference" in final[cols[0].header]
    assert final[cols[1].text] == frames[-1]["variants"][1]["text"] and "MiB" in final[cols[1].stats]
    assert final[cols[2].group]["visible"] is False and final[cols[2].text] == ""
    assert all(c.code not in final for c in cols)  # code blocks are sent once, with the first frame
    assert "nf4" in final[page.readings] and final[page.agreement][1][0] == "nf4"
    assert 'class="qp-tok' in final[cols[1].tokens] and final[cols[2].tokens] == ""
    assert final[page.download]["visible"]
    with open(final[page.download]["value"], encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(frames[-1]))  # tuples come back as lists


def test_the_bar_plot_is_sent_once_when_every_variant_has_loaded():
    page = a_page()
    loading = {"done": False, "variants": [dict(REF, text="", code=""), dict(REF, name="nf4", status="loading",
                                                                             footprint_bytes=None, text="", code="")]}
    loaded = {"done": False, "variants": [dict(REF, text="", code=""), dict(REF, name="nf4", status="streaming",
                                                                            footprint_bytes=160 * 2**20, text="", code="")]}
    assert page.bars not in ui.render(page, loading)
    bars = ui.render(page, loaded, loading)[page.bars]
    assert bars["value"].to_dict("records") == [{"variant": "fp32", "MiB": 500.0, "kind": "fp32 reference"},
                                                {"variant": "nf4", "MiB": 160.0, "kind": "variant"}]
    assert bars["sort"] == ["fp32", "nf4"]  # column order, fp32 first; the plot's default would be alphabetical
    assert page.bars not in ui.render(page, loaded, loaded)
    assert page.bars in ui.render(page, loaded)  # a first frame with everything loaded (cache hits)


def test_the_demo_builds_from_its_config_with_its_api():
    from quantplay.config import Config

    config = Config.from_mapping({"QUANTPLAY_MAX_NEW_TOKENS": "99", "QUANTPLAY_MAX_PROMPT_CHARS": "321",
                                  "QUANTPLAY_QUEUE_SIZE": "5", "QUANTPLAY_MAX_SESSIONS": "3"})
    demo = ui.build_demo(config)
    fns = {d.api_name: d for d in demo.fns.values()}
    assert {"compare", "models", "presets", "status"} <= set(fns)
    assert fns["compare"].concurrency_limit == 3 and fns["on_compare"].concurrency_limit == 3
    assert fns["compare"].concurrency_id == fns["on_compare"].concurrency_id == "hardware"
    assert demo._queue.max_size == 5
    ids = {b.elem_id for b in fns["on_compare"].outputs}
    assert {"status", "readings", "agreement", "footprint-plot", "download-json", "weights-view"} <= ids
    assert {f"col-text-{i}" for i in range(ui_panels.MAX_COLUMNS)} <= ids
    assert len(fns["on_compare"].outputs) == 6 + 5 * ui_panels.MAX_COLUMNS + ui_panels.MAX_COLUMNS - 1
    assert "evaluate" in [f["api_name"] for f in demo.config["dependencies"] if f.get("api_name")]
    blocks = list(demo.blocks.values())
    assert [b.maximum for b in blocks if getattr(b, "label", None) == "max new tokens"] == [99]
    assert [b.max_length for b in blocks if getattr(b, "label", None) == "Prompt"] == [321]
    # gradio's idle queue polling is slowed (see calm_queue_polling): fails loudly if gradio renames the attributes
    assert demo._queue.sleep_when_free == ui.QUEUE_POLL_SECONDS
    assert demo._queue.progress_update_sleep_when_free == ui.PROGRESS_POLL_SECONDS


def test_launch_settings_come_from_the_config():
    from quantplay.config import Config

    local = ui.launch_kwargs(Config())
    assert (local["server_name"], local["server_port"], local["share"]) == ("127.0.0.1", 7860, False)
    space = ui.launch_kwargs(Config.from_mapping({"SPACE_ID": "me/quantplay", "GRADIO_SERVER_PORT": "9000",
                                                 "QUANTPLAY_SHARE": "yes"}))
    assert (space["server_name"], space["server_port"], space["share"]) == ("0.0.0.0", 9000, True)
    named = ui.launch_kwargs(Config.from_mapping({"SPACE_ID": "me/quantplay", "GRADIO_SERVER_NAME": "10.0.0.2"}))
    assert named["server_name"] == "10.0.0.2"


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


NO_CUSTOM = (False, "4-bit", "nf4", "auto", False, "uint8", 6.0, "", False, "auto")


class Session:
    session_hash = "test-session"


def compare_on_page(page, model, picked, prompt, n=4, request=None):
    """Compare's handler as the page calls it: every update it yields."""
    from quantplay import config as qconfig

    handler = ui._compare_handler(page, qconfig.current())
    return handler(request, model, picked, prompt, n, False, 0.0, 1.0, 0, True, *NO_CUSTOM)


@pytest.mark.parametrize("model, picked, prompt, expected", [
    ("tiny", ["nf4"], "   ", "empty"), ("no/such-model-here", ["nf4"], "Hi", "no/such-model-here"),
    ("tiny", ["int8", "nf4", "fp4", "int8-cpu"], "Hi", "Pick at most 3 variants")])
def test_a_refused_request_says_why_in_the_status_only_and_logs_no_traceback(
        tiny_dir, caplog, capsys, model, picked, prompt, expected):
    page = a_page()
    updates = list(compare_on_page(page, str(tiny_dir) if model == "tiny" else model, picked, prompt))
    assert len(updates) == 1 and set(updates[0]) == {page.status}  # every other output keeps what it showed
    assert updates[0][page.status].startswith("⚠ ") and expected.lower() in updates[0][page.status].lower()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err + caplog.text


def test_stop_ends_the_run_as_stopped_and_scores_the_partial_texts(tiny_dir, monkeypatch, cache):
    import gradio as gr

    from quantplay import comparison, ui_run

    monkeypatch.setattr(ui, "run_comparison", lambda *a, **k: comparison.run_comparison(
        *a, cache=cache, device_map="cpu", **k))
    page = a_page()
    updates = []
    for update in compare_on_page(page, str(tiny_dir), ["nf4"], "Hi", n=400, request=Session()):
        updates.append(update)
        if len(update.get(page.columns[0].text) or "") >= 3:
            ui_run.request_stop(Session())
    final = updates[-1]
    assert final[page.status].startswith("Stopped.")
    assert all("stopped" in final[c.header] for c in page.columns[:2])
    assert final[page.columns[0].text] and len(final[page.columns[0].text]) < 2000
    assert "nf4 agrees with fp32" in final[page.readings] and final[page.agreement][1][3] != "–"
    assert final[page.download]["visible"] and 'class="qp-tok' in final[page.columns[1].tokens]
    assert ui_run.running_sessions() == 0  # the session's stop flag goes with its run
    from gradio.utils import get_type_hints

    assert get_type_hints(ui_run.request_stop)["request"] is gr.Request  # what gradio fills in with the session
    from gradio import helpers

    handler = ui._compare_handler(page, None)
    assert helpers.special_args(handler, ["m"], Session())[0][0] is not None  # the page's session reaches Compare


def test_stop_while_loading_says_stopped_at_once_and_generates_nothing():
    from quantplay import ui_run

    flag = threading.Event()
    loading = {"done": False, "variants": [dict(REF, status="loading", message="loading…", text="", code=""),
                                           dict(REF, name="fp4", status="loading", message="waiting to load…",
                                                text="", code="")]}

    def frames(progress):
        yield loading
        progress(0.25, "loading fp32 of tiny…")
        time.sleep(0.5)  # a frame for the progress first
        flag.set()  # Stop pressed while the loader holds the admission lock: no frame comes until it is done
        time.sleep(5)
        yield dict(loading, done=True)

    page = a_page()
    start = time.perf_counter()
    updates = list(ui_run.run_page(frames, lambda f, prev: ui.render(page, f, prev), page.status, flag))
    assert time.perf_counter() - start < 2
    assert "loading fp32 of tiny… 50%" in updates[-2][page.columns[0].header]  # its own progress, on its own column
    assert "waiting to load" in updates[-2][page.columns[1].header]
    assert updates[-1][page.status].startswith("Stopped.")
    assert all("stopped" in updates[-1][c.header] for c in page.columns[:2])
