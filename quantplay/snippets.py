"""Runnable code that repeats one variant's load and generation with plain transformers.

Each column of a comparison carries one: the same model id, the same
`BitsAndBytesConfig` fields and dtype the loader resolved for this device, the
same prompt and the run's generation settings (greedy, or sampling with its
temperature, top-p and seed), so a reader can copy it and reproduce the column
outside quantplay. It is text only: nothing here loads a model.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .catalog import ModelSource
    from .presets import QuantPreset
    from .sampling import GenerationSettings

# dtype-valued fields are written as torch attributes, not strings
_TORCH_DTYPE_FIELDS = ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")


def load_code(
    preset: QuantPreset,
    model_id: str,
    *,
    device: str = "cpu",
    device_map: str = "auto",
    prompt: str = "What is the capital of France?",
    max_new_tokens: int = 50,
    chat_template: bool = True,
    source_comment: str = "",
    sampling: tuple[float, float, int] | None = None,
) -> str:
    """A runnable snippet, in the seed tutorial's style, that repeats exactly this load.

    `sampling` is (temperature, top_p, seed) for a sampled run; None generates greedily.
    """
    lines = [f"# quantplay variant {preset.name!r}: {preset.description or preset.summary()}"]
    if source_comment:
        lines += ["# " + line for line in textwrap.wrap(source_comment, 86)]
    lines += [
        "import torch",
        "from transformers import AutoModelForCausalLM, AutoTokenizer"
        + (", BitsAndBytesConfig" if preset.quantized else ""),
        "",
        f"model_name = {model_id!r}",
        "tokenizer = AutoTokenizer.from_pretrained(model_name)",
    ]
    lines += _load_lines(preset, device, device_map)
    lines += _input_lines(prompt, chat_template)
    lines += _generate_lines(max_new_tokens, sampling)
    lines += [
        "new_tokens = outputs[0, inputs['input_ids'].shape[1]:]",
        "print(tokenizer.decode(new_tokens, skip_special_tokens=True))",
        "print(f'footprint: {model.get_memory_footprint() / 2**20:.1f} MiB')",
    ]
    return "\n".join(lines) + "\n"


def variant_code(preset: QuantPreset, source: ModelSource, device: str, device_map: str, prompt: str,
                 settings: GenerationSettings) -> str:
    """The snippet for one column of a comparison: its model, prompt and settings."""
    sampling = (settings.temperature, settings.top_p, settings.seed) if settings.do_sample else None
    return load_code(preset, source.code_id, device=device, device_map=device_map, prompt=prompt,
                     max_new_tokens=settings.max_new_tokens, chat_template=settings.chat_template,
                     source_comment=source.note, sampling=sampling)


def _generate_lines(max_new_tokens: int, sampling: tuple[float, float, int] | None) -> list[str]:
    if sampling is None:
        return ["with torch.no_grad():",
                f"    outputs = model.generate(**inputs, max_new_tokens={max_new_tokens}, do_sample=False)"]
    temperature, top_p, seed = sampling
    return [
        "# Sampled with the page's settings. quantplay draws each column from its own random stream",
        "# (one generator per variant, seeded with this seed), so the sampled text here can differ",
        "# from the column's; the settings are the same.",
        f"torch.manual_seed({seed})",
        "with torch.no_grad():",
        f"    outputs = model.generate(**inputs, max_new_tokens={max_new_tokens}, do_sample=True,",
        f"                             temperature={temperature!r}, top_p={top_p!r})",
    ]


def _load_lines(preset: QuantPreset, device: str, device_map: str) -> list[str]:
    lines = []
    load_args = ["    model_name,"]
    if preset.quantized:
        lines.append("quantization_config = BitsAndBytesConfig(")
        for key, value in preset.bnb_kwargs(device).items():
            shown = f"torch.{value}" if key in _TORCH_DTYPE_FIELDS else repr(value)
            lines.append(f"    {key}={shown},")
        lines.append(")")
        load_args.append("    quantization_config=quantization_config,")
    load_args.append(f"    dtype=torch.{preset.resolved_dtype(device)},")
    load_args.append(f"    device_map={device_map!r},")
    return lines + ["model = AutoModelForCausalLM.from_pretrained(", *load_args, ")", ""]


def _input_lines(prompt: str, chat_template: bool) -> list[str]:
    if chat_template:
        return [
            f"messages = [{{'role': 'user', 'content': {prompt!r}}}]",
            "inputs = tokenizer.apply_chat_template(",
            "    messages, add_generation_prompt=True, return_tensors='pt', return_dict=True",
            ").to(model.device)",
        ]
    return [f"inputs = tokenizer({prompt!r}, return_tensors='pt').to(model.device)"]
