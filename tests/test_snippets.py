""""Show code": a column's snippet carries the run's generation settings, and runs."""

from __future__ import annotations

import contextlib
import io

from quantplay.presets import PRESETS
from quantplay.snippets import variant_code
from quantplay.streaming import GenerationSettings


def _run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<snippet>", "exec"), {})
    return out.getvalue()


def test_a_sampled_run_gives_a_snippet_with_its_temperature_top_p_and_seed_that_runs(tiny_source):
    settings = GenerationSettings.from_request(max_new_tokens=3, temperature=1.3, top_p=0.8, seed=7,
                                               chat_template=False)
    code = variant_code(PRESETS["int8"], tiny_source, "cpu", "auto", "Hi", settings)
    assert "do_sample=True" in code and "temperature=1.3" in code and "top_p=0.8" in code
    assert "torch.manual_seed(7)" in code
    assert "own random stream" in code  # the page's per-variant sampler can draw other tokens: said in a comment
    assert "footprint:" in _run(code)


def test_a_greedy_run_gives_a_greedy_snippet_without_sampling_settings(tiny_source):
    settings = GenerationSettings.from_request(max_new_tokens=3, temperature=0, top_p=0.8, seed=7,
                                               chat_template=False)
    code = variant_code(PRESETS["fp32"], tiny_source, "cpu", "auto", "Hi", settings)
    assert "do_sample=False" in code and "temperature" not in code and "manual_seed" not in code
    assert "footprint:" in _run(code)
