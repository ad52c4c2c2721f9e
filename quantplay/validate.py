"""What a request may ask: limits, prompt cleaning, variant selection, settings.

Pure checks that raise QuantplayError (PresetError is one) with a message a person can act on;
`comparison.run_comparison` calls them before any work starts. The limits are the
config's (`Config.limits`, parsed once at start-up); messages name the variable
that sets each one, so a person knows what to change.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from .config import Limits  # the config's part a request is checked against (re-exported here)
from .errors import QuantplayError
from .presets import PRESETS, REFERENCE, PresetError, QuantPreset, get_preset
from .sampling import GenerationSettings

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

FRAME_SECONDS_RANGE = (0.05, 5.0)


def check_frame_seconds(value: Any) -> float:
    """The least time between two streamed frames a client asks for."""
    low, high = FRAME_SECONDS_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise QuantplayError(f"frame_seconds must be a number of seconds from {low} to {high}.")
    return float(value)


def clean_prompt(prompt: Any, limits: Limits) -> tuple[str, list[str]]:
    if not isinstance(prompt, str):
        raise QuantplayError("The prompt must be text.")
    warnings = []
    cleaned = _CONTROL.sub("", prompt)
    if cleaned != prompt:
        warnings.append("Removed control characters (such as NUL) from the prompt.")
    if not cleaned.strip():
        raise QuantplayError("The prompt is empty; type a question or the start of a text.")
    if len(cleaned) > limits.max_prompt_chars:
        raise QuantplayError(f"The prompt is {len(cleaned)} characters; the limit is {limits.max_prompt_chars} "
                         "(QUANTPLAY_MAX_PROMPT_CHARS).")
    return cleaned, warnings


def select_presets(variants: Sequence[str] | str | None, custom: dict | None,
                   limits: Limits) -> tuple[list[QuantPreset], list[str]]:
    """fp32 first, then the requested presets in order, then the custom one."""
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    if variants is None or (not variants and not custom):
        raise PresetError(f"Pick at least one variant: {', '.join(PRESETS)}.")
    if not isinstance(variants, (list, tuple)) or not all(isinstance(v, str) for v in variants):
        raise PresetError("variants must be a list of preset names, e.g. [\"int8\", \"nf4\"].")
    warnings = []
    chosen = [REFERENCE]
    for name in variants:
        preset = get_preset(name)
        if preset in chosen:
            if name != "fp32":
                warnings.append(f"{name} was listed twice; it runs once.")
            continue
        chosen.append(preset)
    if custom:
        chosen.append(QuantPreset.from_fields("custom", custom))
    if len(chosen) > limits.max_variants:
        raise PresetError(f"{len(chosen)} variants requested (fp32 included); the limit is {limits.max_variants} "
                          "(QUANTPLAY_MAX_VARIANTS).")
    return chosen, warnings


def check_settings(settings: GenerationSettings, limits: Limits) -> tuple[GenerationSettings, list[str]]:
    warnings = []
    n = settings.max_new_tokens
    if isinstance(n, bool) or not isinstance(n, int):
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        else:
            raise QuantplayError(f"max_new_tokens must be a whole number, not {n!r}.")
    if n < 1:
        raise QuantplayError(f"max_new_tokens must be at least 1, not {n}.")
    if n > limits.max_new_tokens:
        warnings.append(f"max_new_tokens {n} was capped at {limits.max_new_tokens} (QUANTPLAY_MAX_NEW_TOKENS).")
        n = limits.max_new_tokens
    if isinstance(settings.seed, bool) or not isinstance(settings.seed, int) or not 0 <= settings.seed < 2**63:
        raise QuantplayError("seed must be a whole number ≥ 0.")
    if settings.do_sample:
        if not isinstance(settings.temperature, (int, float)) or not 0 < settings.temperature <= 10:
            raise QuantplayError("temperature must be above 0 and at most 10.")
        if not isinstance(settings.top_p, (int, float)) or not 0 < settings.top_p <= 1:
            raise QuantplayError("top_p must be above 0 and at most 1.")
    return dataclasses.replace(settings, max_new_tokens=n), warnings
