"""The library API: `quantplay.compare`, `stream`, `estimate` and `launch`, for scripts and notebooks.

Thin callers of what the CLI and the page call (`comparison.run_comparison`,
`estimator.estimate_model`, `ui.build_demo`), so a result, a default or an error
message is the same whichever way quantplay is used: settings are read by
`GenerationSettings.from_request` (greedy, top-p 1.0, 64 new tokens), refusals are
`QuantplayError`s with the CLI's words, and the result is the `ComparisonResult`
that `python -m quantplay compare --json` prints.

Two promises a notebook needs:
* `import quantplay` stays light: torch, transformers and gradio are imported by
  these functions when first called, not by the package.
* Nothing here re-executes the process (the allocator re-exec belongs to `app.py`
  and `quantplay serve`: in a kernel it would restart the kernel), and `launch`
  returns once the server runs when called from a notebook or an interactive shell.

Settings such as the cache directory and the memory budget come from the process's
config (`quantplay.config.current()`, read from the environment on first use).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any

from . import config as qconfig
from .config import Config
from .errors import QuantplayError

if TYPE_CHECKING:
    import gradio as gr

    from .comparison import ComparisonResult
    from .estimator import Estimate

Variants = Sequence[str] | str


def stream(model: str, variants: Variants, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
           top_p: float = 1.0, seed: int = 0, chat_template: bool = True, custom: dict | None = None,
           device_map: str = "auto",
           progress: Callable[[float, str], None] | None = None) -> Iterator[ComparisonResult]:
    """Yield `ComparisonResult` frames while fp32 and each variant load and stream; the last has done=True.

    `variants` are preset names (fp32 always runs first, as the reference), a list or
    "int8,nf4"; `custom` adds a column from BitsAndBytesConfig fields. Temperature 0 is
    greedy; above 0 samples with `top_p` and `seed`. `progress(fraction, message)`
    hears about loads. A request that cannot run raises `QuantplayError` before the
    first frame; a variant that fails marks only its own column (status "error").
    Leaving the loop early stops the generations and frees their leases.
    """
    from .comparison import run_comparison
    from .sampling import GenerationSettings

    settings = GenerationSettings.from_request(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                               seed=seed, chat_template=chat_template)
    with closing(run_comparison(model, variants, prompt, settings, custom=custom, device_map=device_map,
                                progress=progress)) as frames:
        yield from frames


def compare(model: str, variants: Variants, prompt: str, **settings: Any) -> ComparisonResult:
    """Run a comparison to the end and return its final `ComparisonResult` (see `stream` for the settings).

    `result.variant("int8").text` is one column's answer; `result.to_dict()` is what
    `python -m quantplay compare --json` prints.
    """
    final = None
    for frame in stream(model, variants, prompt, **settings):
        final = frame
    if final is None:  # run_comparison always yields; kept so a broken generator is an error, not a None
        raise QuantplayError("The comparison produced no result.")
    return final


def estimate(model: str, device: str | None = None) -> Estimate:
    """Weight memory of every preset from the model's config alone (no weights read), beside what is free now.

    `device` is "cpu" or "cuda:0" (default: this machine's). Configs shipped with
    quantplay (e.g. "meta-llama/Llama-3.1-8B") work offline.
    """
    from .estimator import estimate_model

    return estimate_model(model, device=device)


def launch(config: Config | None = None, **kwargs: Any) -> gr.Blocks:
    """Serve the page as `make run` does (its CSS, queue, host and port) and return the running Blocks.

    In Jupyter or Colab the page shows inline under the cell and the call returns;
    `demo.close()` stops it. `share` stays off unless asked: `launch(share=True)` or
    QUANTPLAY_SHARE=1 (gradio would otherwise turn it on by itself in Colab). Keyword
    arguments go to `gr.Blocks.launch` and win over the defaults. Without a port in the
    config (GRADIO_SERVER_PORT), gradio picks the first free one from 7860, so a second
    launch in the same kernel does not fail on a taken port.
    """
    config = config or qconfig.current()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # as app.py: nothing phones home unless asked
    from .ui import build_demo, launch_kwargs

    options = launch_kwargs(config)
    if "GRADIO_SERVER_PORT" not in config.sources:
        options["server_port"] = None
    demo = build_demo(config)
    demo.launch(**{**options, **kwargs})
    return demo
