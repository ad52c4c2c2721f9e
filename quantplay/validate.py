"""What a request may ask: limits, prompt cleaning, variant selection, settings, prompt encoding.

Pure checks that raise ValueError (or PresetError) with a message a person can act on;
`compare.run_comparison` calls them before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .presets import PRESETS, REFERENCE, PresetError, QuantPreset, get_preset
from .streaming import GenerationSettings

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = 4000
    max_prompt_tokens: int = 512  # prefill stays short; longer prompts keep their end
    max_new_tokens: int = 512
    max_variants: int = 5  # fp32 + 4

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_prompt_chars=env_int("QUANTPLAY_MAX_PROMPT_CHARS", cls.max_prompt_chars),
            max_prompt_tokens=env_int("QUANTPLAY_MAX_PROMPT_TOKENS", cls.max_prompt_tokens),
            max_new_tokens=env_int("QUANTPLAY_MAX_NEW_TOKENS", cls.max_new_tokens),
            max_variants=env_int("QUANTPLAY_MAX_VARIANTS", cls.max_variants),
        )


FRAME_SECONDS_RANGE = (0.05, 5.0)


def check_frame_seconds(value: Any) -> float:
    """The least time between two streamed frames a client asks for."""
    low, high = FRAME_SECONDS_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"frame_seconds must be a number of seconds from {low} to {high}.")
    return float(value)


def clean_prompt(prompt: Any, limits: Limits) -> tuple[str, list[str]]:
    if not isinstance(prompt, str):
        raise ValueError("The prompt must be text.")
    warnings = []
    cleaned = _CONTROL.sub("", prompt)
    if cleaned != prompt:
        warnings.append("Removed control characters (such as NUL) from the prompt.")
    if not cleaned.strip():
        raise ValueError("The prompt is empty; type a question or the start of a text.")
    if len(cleaned) > limits.max_prompt_chars:
        raise ValueError(f"The prompt is {len(cleaned)} characters; the limit is {limits.max_prompt_chars} "
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
            raise ValueError(f"max_new_tokens must be a whole number, not {n!r}.")
    if n < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {n}.")
    if n > limits.max_new_tokens:
        warnings.append(f"max_new_tokens {n} was capped at {limits.max_new_tokens} (QUANTPLAY_MAX_NEW_TOKENS).")
        n = limits.max_new_tokens
    if isinstance(settings.seed, bool) or not isinstance(settings.seed, int) or not 0 <= settings.seed < 2**63:
        raise ValueError("seed must be a whole number ≥ 0.")
    if settings.do_sample:
        if not isinstance(settings.temperature, (int, float)) or not 0 < settings.temperature <= 10:
            raise ValueError("temperature must be above 0 and at most 10.")
        if not isinstance(settings.top_p, (int, float)) or not 0 < settings.top_p <= 1:
            raise ValueError("top_p must be above 0 and at most 1.")
    return dataclasses.replace(settings, max_new_tokens=n), warnings


def encode_prompt(tokenizer, prompt: str, chat_template: bool, limits: Limits) -> tuple[list[int], list[str]]:
    warnings = []
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
    else:
        if chat_template:
            warnings.append("This tokenizer has no chat template; the prompt is used as plain text.")
        ids = tokenizer(prompt)["input_ids"]
    ids = list(ids)
    if len(ids) > limits.max_prompt_tokens:
        warnings.append(f"The prompt is {len(ids)} tokens; only its last {limits.max_prompt_tokens} are used "
                        "(QUANTPLAY_MAX_PROMPT_TOKENS).")
        ids = ids[-limits.max_prompt_tokens:]
    return ids, warnings
