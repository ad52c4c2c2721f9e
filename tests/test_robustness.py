"""Bad input through the API: a clear message for each, never a traceback, and the app keeps serving."""

import json

import pytest
from gradio_client import Client

pytestmark = [pytest.mark.api, pytest.mark.slow]
BUNDLED = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def odd_models(models_root):
    """A vision model (not causal) and a model that needs its repository's code, in the allowed dir."""
    vit = models_root / "vit"
    vit.mkdir(exist_ok=True)
    (vit / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    remote = models_root / "remote-code"
    remote.mkdir(exist_ok=True)
    (remote / "config.json").write_text(json.dumps({
        "model_type": "fancy-lm", "architectures": ["FancyForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_fancy.FancyConfig",
                     "AutoModelForCausalLM": "modeling_fancy.FancyForCausalLM"}}))
    return {"vit": str(vit), "remote": str(remote)}


def cases(odd):
    ok = {"model": BUNDLED, "variants": ["int8"], "prompt": "Hi", "max_new_tokens": 2}
    bad = [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   \n\t "}, "prompt is empty"),
        ({"prompt": "\x00\x01\x02"}, "prompt is empty"),
        ({"prompt": "x" * 5000}, "limit is 4000"),
        ({"variants": ["int9"]}, "Unknown preset"),
        ({"variants": []}, "at least one"),
        ({"variants": ["fp16", "bf16", "int8", "nf4", "fp4"]}, "the limit is 5"),
        ({"max_new_tokens": 0}, "at least 1"),
        ({"max_new_tokens": -5}, "at least 1"),
        ({"model": ""}, "Choose a model"),
        ({"model": "no-such-model-xyz"}, "unreachable"),
        ({"model": "../.."}, "not a model id"),
        ({"model": "/etc"}, "QUANTPLAY_MODEL_DIRS"),
        ({"model": "~/models"}, "not a model id"),
        ({"model": "--help"}, "not a valid Hugging Face model id"),
        ({"model": "has space"}, "not a valid Hugging Face model id"),
        ({"model": "https://huggingface.co/gpt2"}, "not a model id"),
        ({"model": "x" * 300}, "the limit is 200"),
        ({"model": "gpt２"}, "not a valid Hugging Face model id"),
        ({"model": "/tmp"}, "QUANTPLAY_MODEL_DIRS"),
        ({"model": odd["vit"]}, "not a causal language model"),
        ({"model": odd["remote"]}, "custom code"),
        ({"custom": {"load_in_8bit": True, "load_in_4bit": True}}, "choose one"),
        ({"custom": {"load_in_4bit": True, "bnb_4bit_quant_type": "int2"}}, "'nf4' or 'fp4'"),
        ({"custom": {"load_in_8bit": True, "llm_int8_threshold": -1}}, "positive number"),
        ({"custom": {"trust_remote_code": True}}, "Unknown setting"),
        ({"custom": {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float8"}}, "not a dtype"),
        ({"model": "<script>alert(1)</script>"}, "&lt;script&gt;"),
        ({"seed": -1}, "seed must be"),
        ({"temperature": 50.0}, "temperature must be"),
        ({"frame_seconds": 0.0}, "frame_seconds must be"),
        ({"frame_seconds": 600.0}, "frame_seconds must be"),
    ]
    return ok, bad


def test_bad_input_gets_a_message_and_the_next_request_succeeds(client, odd_models):
    ok, bad = cases(odd_models)
    for change, message in bad:
        with pytest.raises(Exception) as info:
            client.predict(**(ok | change), api_name="/compare")
        text = str(info.value)
        assert message in text, (change, text)
        assert "Traceback" not in text and "File \"" not in text
        final = client.predict(**ok, api_name="/compare")
        assert final["done"] and all(v["status"] == "done" for v in final["variants"]), change


@pytest.mark.parametrize("prompt", ["Translate: مرحبا بالعالم", "Say 🙂🚀 twice", "zero\u200bwidth\u200djoin", "Ünïcödé?"])
def test_emoji_rtl_and_zero_width_prompts_work(client, prompt):
    final = client.predict(model=BUNDLED, variants=["fp32"], prompt=prompt, max_new_tokens=4, api_name="/compare")
    assert final["done"] and final["variants"][0]["status"] == "done" and final["prompt"] == prompt


def test_absurd_lengths_are_capped_with_a_warning(client):
    final = client.predict(model=BUNDLED, variants=["fp32"], prompt="Count: 1 2 3", max_new_tokens=10**9,
                           api_name="/compare")
    assert final["variants"][0]["new_tokens"] <= 64
    assert any("capped at 64" in w for w in final["warnings"])
