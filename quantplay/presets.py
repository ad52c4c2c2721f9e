"""Quantization presets: what a variant is, checked when it is made.

A `QuantPreset` maps one-to-one onto the `from_pretrained` arguments that
matter for a load: `dtype` and the fields of `BitsAndBytesConfig`. It knows
nothing about models or devices until asked (`to_bnb_config(device)`,
`device_problems(device)`), so it can be validated, hashed and cached on
anywhere; `snippets` turns one into runnable code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import QuantplayError

FLOAT_DTYPES = ("float32", "float16", "bfloat16")
QUANT_TYPES = ("fp4", "nf4")
QUANT_STORAGE = ("uint8", "float16", "bfloat16", "float32")

# Fields a user may set for a custom variant, as BitsAndBytesConfig names them.
BNB_FIELDS = (
    "load_in_8bit",
    "load_in_4bit",
    "llm_int8_threshold",
    "llm_int8_skip_modules",
    "llm_int8_enable_fp32_cpu_offload",
    "bnb_4bit_quant_type",
    "bnb_4bit_compute_dtype",
    "bnb_4bit_use_double_quant",
    "bnb_4bit_quant_storage",
)

# Knobs people pass that BitsAndBytesConfig accepts or tutorials show, but which
# change nothing. We report them instead of dropping them silently.
IGNORED_KNOBS = {
    "bnb_8bit_compute_dtype": (
        "bnb_8bit_compute_dtype is not a BitsAndBytesConfig field and is ignored "
        "without a word: LLM.int8 chooses its own matmul dtype (it casts inputs to "
        "float16 for the int8 matmul, whatever you ask)."
    ),
    "bnb_8bit_quant_type": (
        "bnb_8bit_quant_type is not a BitsAndBytesConfig field; 8-bit loading has "
        "one scheme (LLM.int8 vector-wise absmax), so it is ignored."
    ),
    "bnb_8bit_use_double_quant": (
        "bnb_8bit_use_double_quant is not a BitsAndBytesConfig field; double "
        "quantization exists only for 4-bit, so it is ignored."
    ),
}

ALIASES = {"torch_dtype": "dtype"}


class PresetError(QuantplayError):
    """Settings that cannot describe a load; the message says how to fix them."""


def _dtype_name(value: Any, what: str, allowed: tuple[str, ...]) -> str:
    name = str(value).removeprefix("torch.")
    name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16",
            "float": "float32"}.get(name, name)
    if name not in allowed:
        raise PresetError(f"{what}={value!r} is not a dtype quantplay knows; use one of {', '.join(allowed)}.")
    return name


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


@dataclass(frozen=True)
class QuantPreset:
    """One way to load a model. Validated on creation; immutable and hashable."""

    name: str = field(compare=False)  # two presets with the same settings share one cached load
    description: str = field(default="", compare=False)
    dtype: str | None = None  # dtype of weights left in floating point; None: float32 on CPU, bfloat16 on CUDA for k-bit
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: tuple[str, ...] | None = None
    llm_int8_enable_fp32_cpu_offload: bool = False
    bnb_4bit_quant_type: str = "fp4"  # BitsAndBytesConfig's own default
    bnb_4bit_compute_dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    bnb_4bit_use_double_quant: bool = False
    bnb_4bit_quant_storage: str = "uint8"
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise PresetError("A variant needs a name.")
        for flag in ("load_in_8bit", "load_in_4bit", "llm_int8_enable_fp32_cpu_offload", "bnb_4bit_use_double_quant"):
            if not isinstance(getattr(self, flag), bool):
                raise PresetError(f"{flag} must be true or false, not {getattr(self, flag)!r}.")
        if self.load_in_8bit and self.load_in_4bit:
            raise PresetError("load_in_8bit and load_in_4bit are both set; choose one (8-bit LLM.int8 or 4-bit NF4/FP4).")
        if self.dtype is not None:
            object.__setattr__(self, "dtype", _dtype_name(self.dtype, "dtype", FLOAT_DTYPES))
        if self.bnb_4bit_compute_dtype is not None:
            object.__setattr__(self, "bnb_4bit_compute_dtype",
                               _dtype_name(self.bnb_4bit_compute_dtype, "bnb_4bit_compute_dtype", FLOAT_DTYPES))
        object.__setattr__(self, "bnb_4bit_quant_storage",
                           _dtype_name(self.bnb_4bit_quant_storage, "bnb_4bit_quant_storage", QUANT_STORAGE))
        if self.bnb_4bit_quant_type not in QUANT_TYPES:
            raise PresetError(f"bnb_4bit_quant_type={self.bnb_4bit_quant_type!r} is unknown; use 'nf4' or 'fp4'.")
        threshold = self.llm_int8_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
            raise PresetError(
                f"llm_int8_threshold={threshold!r} must be a positive number (6.0 is the default; "
                "outlier features above it stay in 16-bit)."
            )
        object.__setattr__(self, "llm_int8_threshold", float(threshold))
        skip = self.llm_int8_skip_modules
        if skip is not None:
            if isinstance(skip, str) or not all(isinstance(s, str) and s for s in skip):
                raise PresetError("llm_int8_skip_modules must be a list of module names, e.g. [\"lm_head\"].")
            object.__setattr__(self, "llm_int8_skip_modules", tuple(skip))

    # -- what kind of load ------------------------------------------------
    @property
    def quantized(self) -> bool:
        return self.load_in_8bit or self.load_in_4bit

    @property
    def bits(self) -> int:
        if self.load_in_4bit:
            return 4
        if self.load_in_8bit:
            return 8
        return {"float32": 32, "float16": 16, "bfloat16": 16}[self.dtype or "float32"]

    def resolved_dtype(self, device: str) -> str:
        if self.dtype:
            return self.dtype
        if self.quantized and device.startswith("cuda"):
            return "bfloat16"
        return "float32"

    def resolved_compute_dtype(self, device: str) -> str:
        if self.bnb_4bit_compute_dtype:
            return self.bnb_4bit_compute_dtype
        return "bfloat16" if device.startswith("cuda") else "float32"

    def bnb_kwargs(self, device: str) -> dict[str, Any] | None:
        """BitsAndBytesConfig keyword arguments (dtype names as strings), or None."""
        if not self.quantized:
            return None
        kwargs: dict[str, Any] = {}
        if self.load_in_8bit:
            kwargs["load_in_8bit"] = True
            if self.llm_int8_threshold != 6.0:
                kwargs["llm_int8_threshold"] = self.llm_int8_threshold
        else:
            kwargs.update(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.bnb_4bit_quant_type,
                bnb_4bit_compute_dtype=self.resolved_compute_dtype(device),
                bnb_4bit_use_double_quant=self.bnb_4bit_use_double_quant,
            )
            if self.bnb_4bit_quant_storage != "uint8":
                kwargs["bnb_4bit_quant_storage"] = self.bnb_4bit_quant_storage
        if self.llm_int8_skip_modules is not None:
            kwargs["llm_int8_skip_modules"] = list(self.llm_int8_skip_modules)
        if self.llm_int8_enable_fp32_cpu_offload:
            kwargs["llm_int8_enable_fp32_cpu_offload"] = True
        return kwargs

    def to_bnb_config(self, device: str = "cpu"):
        """The `BitsAndBytesConfig` for this preset on `device`, or None for float presets."""
        kwargs = self.bnb_kwargs(device)
        if kwargs is None:
            return None
        from transformers import BitsAndBytesConfig

        for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
            if key in kwargs:
                kwargs[key] = torch_dtype(kwargs[key])
        return BitsAndBytesConfig(**kwargs)

    def device_problems(self, device: str) -> list[str]:
        """Settings that cannot work on `device`; checked at load, when the device is known."""
        problems = []
        if device == "cpu" and self.dtype == "float16" and self.load_in_4bit:
            problems.append("4-bit with dtype=float16 is not supported by bitsandbytes on CPU; use float32 or bfloat16.")
        return problems

    def device_notes(self, device: str) -> list[str]:
        """Settings that are valid but change nothing on `device`."""
        notes = list(self.notes)
        if self.llm_int8_enable_fp32_cpu_offload and not device.startswith("cuda"):
            notes.append("llm_int8_enable_fp32_cpu_offload has no effect here: the whole model is already on the CPU.")
        return notes

    # -- reproduce it -----------------------------------------------------
    def summary(self) -> str:
        if self.load_in_8bit:
            return f"LLM.int8 weights (threshold {self.llm_int8_threshold:g})"
        if self.load_in_4bit:
            dq = " + double quant" if self.bnb_4bit_use_double_quant else ""
            compute = self.bnb_4bit_compute_dtype or "auto"
            return f"4-bit {self.bnb_4bit_quant_type.upper()}{dq}, compute {compute}"
        return f"{self.dtype or 'float32'} weights, no quantization"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["llm_int8_skip_modules"] = list(self.llm_int8_skip_modules) if self.llm_int8_skip_modules else None
        data["notes"] = list(self.notes)
        data["bits"] = self.bits
        return data

    @classmethod
    def from_fields(cls, name: str, fields: dict[str, Any]) -> QuantPreset:
        """A custom preset from BitsAndBytesConfig-style fields (as JSON gives them)."""
        if not isinstance(fields, dict):
            raise PresetError("Custom settings must be an object of BitsAndBytesConfig fields, e.g. {\"load_in_4bit\": true}.")
        kwargs: dict[str, Any] = {}
        notes: list[str] = []
        for key, value in fields.items():
            key = ALIASES.get(key, key)
            if key in IGNORED_KNOBS:
                notes.append(IGNORED_KNOBS[key])
            elif key in BNB_FIELDS or key == "dtype":
                kwargs[key] = value
            else:
                raise PresetError(
                    f"Unknown setting {key!r}. Custom variants take: dtype, {', '.join(BNB_FIELDS)}."
                )
        if kwargs.get("load_in_8bit"):
            for key in kwargs:
                if key.startswith("bnb_4bit_"):
                    notes.append(f"{key} has no effect with load_in_8bit; it applies to 4-bit loads only.")
        elif kwargs.get("load_in_4bit"):
            if "llm_int8_threshold" in kwargs:
                notes.append("llm_int8_threshold has no effect with load_in_4bit; it applies to 8-bit loads only.")
        else:
            for key in kwargs:
                if key not in ("dtype",):
                    notes.append(f"{key} has no effect: neither load_in_8bit nor load_in_4bit is set, so nothing is quantized.")
        skip = kwargs.get("llm_int8_skip_modules")
        if skip is not None and isinstance(skip, (list, tuple)) and "lm_head" not in skip:
            # A custom list replaces transformers' default, which keeps the output layer in float; quantizing a
            # tied lm_head breaks the load, so keep it out as the default does.
            kwargs["llm_int8_skip_modules"] = [*skip, "lm_head"]
            notes.append("llm_int8_skip_modules replaces the default list; quantplay added 'lm_head' so the output "
                         "layer stays unquantized, as it does by default.")
        return cls(name=name, description="custom bitsandbytes settings", notes=tuple(notes), **kwargs)


PRESETS: dict[str, QuantPreset] = {
    p.name: p
    for p in (
        QuantPreset("fp32", "float32 reference, no quantization", dtype="float32"),
        QuantPreset("fp16", "float16 weights, no quantization", dtype="float16"),
        QuantPreset("bf16", "bfloat16 weights, no quantization", dtype="bfloat16"),
        QuantPreset("int8", "LLM.int8: 8-bit weights, outliers in 16-bit", load_in_8bit=True),
        QuantPreset("nf4", "4-bit NormalFloat weights", load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        QuantPreset("nf4-dq", "4-bit NormalFloat + double quantization of the scales", load_in_4bit=True,
                    bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
        QuantPreset("fp4", "4-bit float weights", load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    )
}
REFERENCE = PRESETS["fp32"]


def get_preset(name: str) -> QuantPreset:
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise PresetError(f"Unknown preset {name!r}; choose from {', '.join(PRESETS)}.") from None
