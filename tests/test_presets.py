import contextlib
import io

import pytest
import torch

from quantplay.errors import QuantplayError
from quantplay.presets import IGNORED_KNOBS, PRESETS, PresetError, QuantPreset
from quantplay.snippets import load_code


def test_named_presets_exist_and_describe_their_load():
    assert list(PRESETS) == ["fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq", "fp4"]
    assert PRESETS["fp32"].to_bnb_config() is None
    assert PRESETS["int8"].to_bnb_config().load_in_8bit
    nf4 = PRESETS["nf4"].to_bnb_config("cpu")
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and not nf4.bnb_4bit_use_double_quant
    assert PRESETS["nf4-dq"].to_bnb_config().bnb_4bit_use_double_quant
    assert PRESETS["fp4"].to_bnb_config().bnb_4bit_quant_type == "fp4"


def test_compute_dtype_follows_the_device_unless_chosen():
    assert PRESETS["nf4"].to_bnb_config("cpu").bnb_4bit_compute_dtype == torch.float32
    assert PRESETS["nf4"].to_bnb_config("cuda:0").bnb_4bit_compute_dtype == torch.bfloat16
    chosen = QuantPreset.from_fields("c", {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float16"})
    assert chosen.to_bnb_config("cpu").bnb_4bit_compute_dtype == torch.float16


@pytest.mark.parametrize("fields, message", [
    ({"load_in_8bit": True, "load_in_4bit": True}, "choose one"),
    ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "float8"}, "not a dtype"),
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "int3"}, "'nf4' or 'fp4'"),
    ({"load_in_8bit": True, "llm_int8_threshold": 0}, "positive number"),
    ({"load_in_8bit": True, "llm_int8_threshold": -1.5}, "positive number"),
    ({"load_in_8bit": "yes"}, "true or false"),
    ({"load_in_4bit": True, "bnb_4bit_quant_storage": "int4"}, "not a dtype"),
    ({"load_in_8bit": True, "llm_int8_skip_modules": "lm_head"}, "list of module names"),
    ({"load_in_4bit": True, "trust_remote_code": True}, "Unknown setting"),
])
def test_bad_settings_fail_on_creation_with_an_actionable_message(fields, message):
    with pytest.raises(PresetError, match=message) as info:
        QuantPreset.from_fields("custom", fields)
    assert isinstance(info.value, QuantplayError)  # the one type the CLI, the API and the page catch


def test_every_knob_maps_onto_bitsandbytes_config():
    fields = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16",
              "bnb_4bit_use_double_quant": True, "bnb_4bit_quant_storage": "bfloat16",
              "llm_int8_skip_modules": ["lm_head", "mlp.down_proj"], "llm_int8_enable_fp32_cpu_offload": True}
    cfg = QuantPreset.from_fields("custom", fields).to_bnb_config("cpu")
    assert cfg.bnb_4bit_quant_storage == torch.bfloat16
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16
    assert cfg.llm_int8_skip_modules == ["lm_head", "mlp.down_proj"]
    assert cfg.llm_int8_enable_fp32_cpu_offload
    int8 = QuantPreset.from_fields("custom", {"load_in_8bit": True, "llm_int8_threshold": 4.0}).to_bnb_config()
    assert int8.llm_int8_threshold == 4.0


def test_ignored_knobs_are_reported_not_dropped():
    preset = QuantPreset.from_fields("custom", {"load_in_8bit": True, "bnb_8bit_compute_dtype": "float16"})
    assert IGNORED_KNOBS["bnb_8bit_compute_dtype"] in preset.notes
    assert "bnb_8bit_compute_dtype" in preset.device_notes("cpu")[0]
    assert "bnb_8bit_compute_dtype" not in load_code(preset, "gpt2")
    mixed = QuantPreset.from_fields("custom", {"load_in_8bit": True, "bnb_4bit_quant_type": "nf4"})
    assert any("no effect with load_in_8bit" in n for n in mixed.notes)
    offload = QuantPreset.from_fields("custom", {"load_in_8bit": True, "llm_int8_enable_fp32_cpu_offload": True})
    assert any("no effect here" in n for n in offload.device_notes("cpu"))


def test_custom_skip_list_keeps_the_output_layer_unquantized():
    preset = QuantPreset.from_fields("custom", {"load_in_8bit": True, "llm_int8_skip_modules": ["mlp"]})
    assert preset.llm_int8_skip_modules == ("mlp", "lm_head")
    assert any("lm_head" in n for n in preset.notes)


def test_presets_with_equal_settings_share_a_cache_key():
    same = QuantPreset.from_fields("custom", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})
    assert same == PRESETS["nf4"] and hash(same) == hash(PRESETS["nf4"])
    assert PRESETS["nf4"] != PRESETS["nf4-dq"]


def test_device_problems_are_checked_at_load():
    preset = QuantPreset.from_fields("custom", {"load_in_4bit": True, "dtype": "float16"})
    assert preset.device_problems("cpu") == [
        "4-bit with dtype=float16 is not supported by bitsandbytes on CPU; use float32 or bfloat16."]
    assert not preset.device_problems("cuda:0")


@pytest.mark.parametrize("name", ["fp32", "int8", "nf4-dq"])
def test_to_code_runs_and_reproduces_the_load(name, tiny_dir):
    code = load_code(PRESETS[name], str(tiny_dir), device="cpu", max_new_tokens=3, prompt="Hi")
    assert ("BitsAndBytesConfig(" in code) == (name != "fp32")  # quantized presets, and only they, configure bnb
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"<to_code {name}>", "exec"), {})
    assert "footprint:" in out.getvalue()
