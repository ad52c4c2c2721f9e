"""The page's looks without a browser: token text colours in both themes, the footer, the memory timer."""

import gradio as gr

from quantplay import ui, views


def _scores(*kls: float) -> list[dict]:
    return [{"token_id": i, "text": f"t{i}", "kl": kl, "reference_prob": 0.5, "agree": True,
             "fp32_top": [], "variant_top": []} for i, kl in enumerate(kls)]


def test_shaded_tokens_carry_dark_text_and_unshaded_ones_the_page_colour():
    page = views.token_html({"name": "nf4", "top1_agreement": 1.0, "token_scores": _scores(0.001, 0.05, 0.3, 2.0)})
    assert page.count(f"color:{views.SHADED_TEXT}") == 3  # the three shades, light in both themes
    assert 'style="background:transparent"' in page  # KL < 0.01: no shade, so the theme's own text colour
    assert "color: #111" not in ui.CSS and "color:#111" not in ui.CSS  # no dark text forced on the page background
    legend = views.legend_html()
    assert legend.count(f"color:{views.SHADED_TEXT}") == 3 and 'style="background:transparent"' in legend


def test_the_footer_keeps_gradios_settings_link():
    assert ui.launch_kwargs()["footer_links"] == ["api", "gradio", "settings"]


def test_the_memory_timer_starts_off_and_follows_the_memory_panel():
    demo = ui.build_demo()
    timers = [b for b in demo.blocks.values() if isinstance(b, gr.Timer)]
    assert [t.active for t in timers] == [False]
    (timer,) = timers
    panel = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "memory-panel")
    assert isinstance(panel, gr.Accordion) and panel.open is False
    by_trigger = {target: fn for fn in demo.fns.values() for target in fn.targets}  # (block id, event name)
    assert by_trigger[(timer._id, "tick")].api_name == "memory_panel"
    assert timer in by_trigger[(panel._id, "expand")].outputs
    assert by_trigger[(panel._id, "collapse")].outputs == [timer]
