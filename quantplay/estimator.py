"""Weight memory of a preset from a model config alone: no weights are read.

The architecture is built on the meta device (accelerate's `init_empty_weights`),
then every parameter is sized the way bitsandbytes will store it. The linear
layers transformers would convert are found with transformers' own rules
(`get_keys_to_not_convert`, `should_convert_module`), so embeddings, norms and
the (tied) output layer stay in floating point here exactly as in a real load.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from typing import TYPE_CHECKING

import torch

from . import config as qconfig
from .config import Config
from .presets import QuantPreset

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # importlib.abc before Python 3.11

BLOCKSIZE_4BIT = 64  # bitsandbytes' default for weights
NESTED_BLOCKSIZE = 256  # blocks of absmax per double-quant block
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class WeightCount:
    """Parameters split by how bitsandbytes would store them."""

    parameters: int
    linear_shapes: tuple[tuple[int, int, bool], ...]  # (out, in, has_bias) of layers bnb converts
    other_parameters: int  # parameters kept in floating point


def meta_model(config):
    """The architecture on the meta device, built on the compute thread: `init_empty_weights`
    patches torch process-wide, so a real load running beside it would get meta tensors."""
    from .compute import COMPUTE

    return COMPUTE.call(_meta_model, config)


def _meta_model(config):
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # tied embeddings are one tensor in a real load; count them once
    return model


def count_weights(config, skip_modules: tuple[str, ...] | None = None) -> WeightCount:
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    model = meta_model(config)
    not_convert = get_keys_to_not_convert(model) if skip_modules is None else list(skip_modules)
    not_convert += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    linear: list[tuple[int, int, bool]] = []
    converted: set[int] = set()
    for name, module in model.named_modules():
        if not should_convert_module(name, not_convert):
            continue
        if type(module) is torch.nn.Linear or isinstance(module, Conv1D):
            weight = module.weight
            out_f, in_f = (weight.shape[1], weight.shape[0]) if isinstance(module, Conv1D) else weight.shape
            linear.append((int(out_f), int(in_f), module.bias is not None))
            converted.add(id(weight))
    seen: set[int] = set()
    total = other = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if id(p) not in converted:
            other += p.numel()
    return WeightCount(total, tuple(linear), other)


def linear_bytes(out_f: int, in_f: int, preset: QuantPreset, float_bytes: int) -> int:
    """Storage of one converted linear weight, quant state included (bias excluded)."""
    n = out_f * in_f
    if preset.load_in_8bit:
        return n + out_f * 4  # int8 weights + one float32 scale (SCB) per output row
    if preset.load_in_4bit:
        packed = math.ceil(n / 2)
        blocks = math.ceil(n / BLOCKSIZE_4BIT)
        code = 16 * 4  # the 4-bit quant map
        if preset.bnb_4bit_use_double_quant:
            nested = math.ceil(blocks / NESTED_BLOCKSIZE)
            # uint8 absmax, float32 absmax of absmax, the 256-entry 8-bit map, one float32 offset
            return packed + blocks + nested * 4 + 256 * 4 + code + 4
        return packed + blocks * 4 + code
    return n * float_bytes


def estimate_bytes(counts: WeightCount, preset: QuantPreset, device: str = "cpu") -> int:
    float_bytes = _DTYPE_BYTES[preset.resolved_dtype(device)]
    total = counts.other_parameters * float_bytes
    for out_f, in_f, has_bias in counts.linear_shapes:
        total += linear_bytes(out_f, in_f, preset, float_bytes) + (out_f * float_bytes if has_bias else 0)
    if not preset.quantized:
        total = counts.parameters * float_bytes
    return total


def checkpoint_dtype_bytes(config) -> int:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return _DTYPE_BYTES.get(str(dtype).removeprefix("torch."), 4)


def load_peak_bytes(counts: WeightCount, preset: QuantPreset, config, device: str = "cpu") -> int:
    """Resident bytes while loading: the final weights plus, when bitsandbytes quantizes
    or the dtype changes, the checkpoint's float tensors that pass through memory."""
    final = estimate_bytes(counts, preset, device)
    source = counts.parameters * checkpoint_dtype_bytes(config)
    if preset.quantized or _DTYPE_BYTES[preset.resolved_dtype(device)] != checkpoint_dtype_bytes(config):
        return final + source
    return final


# -- a whole model, every preset ------------------------------------------------
# Inside the package, read through importlib.resources: an installed copy finds them from any directory.
CONFIGS = resources.files("quantplay") / "data" / "configs"


def _config_files(folder: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _config_files(entry, f"{prefix}{entry.name}/")
        elif entry.name == "config.json" and prefix:
            yield prefix.rstrip("/"), entry


def shipped_configs() -> list[str]:
    """Models whose config ships in quantplay/data/configs (estimates work offline)."""
    return sorted(name for name, _ in _config_files(CONFIGS))


def _shipped_config(name: str):
    """The shipped copy of `name`'s config, or None; read as text, so no directory on disk is needed."""
    from transformers import CONFIG_MAPPING

    found = dict(_config_files(CONFIGS)).get(name)
    if found is None:
        return None
    values = json.loads(found.read_text(encoding="utf-8"))
    return CONFIG_MAPPING[values["model_type"]].from_dict(values)


def load_config(name: str, config: Config | None = None):
    """A model's config, without weights: shipped copy, allow-listed local dir, or the Hub."""
    from transformers import AutoConfig

    from . import catalog

    settings = config or qconfig.current()
    name = catalog.validate_name(name)
    if name == catalog.BUNDLED_NAME:
        name = catalog.BUNDLED_HUB_ID
    shipped = _shipped_config(name)
    if shipped is not None:
        return shipped, "shipped config"
    try:
        source = catalog.resolve(name, config=settings)
    except catalog.ModelUnavailable as exc:
        raise catalog.ModelUnavailable(f"{exc} Configs shipped for offline estimates: {', '.join(shipped_configs())}.") from None
    model_config = AutoConfig.from_pretrained(source.path, revision=source.revision,
                                              trust_remote_code=settings.trust_remote_code)
    return model_config, source.kind


@dataclass(frozen=True)
class Estimate:
    """Weight memory of every named preset of one model, beside the memory available now."""

    model: str
    parameters: int
    estimates: dict[str, int]  # preset name -> weight bytes
    available_bytes: int
    fits: dict[str, bool]  # preset name -> estimate <= available_bytes
    device: str
    config_source: str  # "shipped config", or where catalog found the model

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_model(name: str, device: str | None = None, config: Config | None = None) -> Estimate:
    """Weight memory of every named preset, compared with the memory available now."""
    from . import metrics
    from .presets import PRESETS

    device = device or metrics.default_device()
    model_config, origin = load_config(name, config)
    counts = count_weights(model_config)
    available = metrics.device_memory(device)["device_available_bytes"]
    estimates = {p.name: estimate_bytes(counts, p, device) for p in PRESETS.values()}
    return Estimate(model=name, parameters=counts.parameters, estimates=estimates, available_bytes=available,
                    fits={preset: size <= available for preset, size in estimates.items()}, device=device,
                    config_source=origin)
