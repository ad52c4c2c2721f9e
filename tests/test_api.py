"""The launched app through gradio_client, as a script or notebook would call it."""

import pytest
from gradio_client import Client

from quantplay import metrics

pytestmark = [pytest.mark.api, pytest.mark.slow]


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_models_and_presets_answer(client):
    models = client.predict(api_name="/models")
    assert models[0] == "SmolLM2-135M-Instruct" and "gpt2" in models
    presets = client.predict(api_name="/presets")
    assert list(presets) == ["fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq", "fp4"]
    assert presets["nf4-dq"]["bnb_4bit_use_double_quant"] is True


def test_compare_streams_frames_and_ends_with_a_complete_one(client):
    job = client.submit(model="SmolLM2-135M-Instruct", variants=["int8", "nf4"], prompt="What is the capital of France?",
                        max_new_tokens=16, api_name="/compare")
    frames = list(job)
    final = job.result()
    intermediate = [f for f in frames if not f["done"]]
    assert len(intermediate) >= 3
    assert any(0 < f["variants"][0]["new_tokens"] < 16 for f in intermediate)  # tokens arrive while they stream
    assert final["done"] and [v["name"] for v in final["variants"]] == ["fp32", "int8", "nf4"]
    assert all(v["status"] == "done" and v["text"] and v["footprint_bytes"] for v in final["variants"])
    assert "Paris" in final["variants"][0]["text"]
    assert final["prompt_token_ids"] and final["environment"]["device"] == metrics.default_device()


def test_custom_variant_and_sampling_options(client):
    final = client.predict(model="SmolLM2-135M-Instruct", variants=[], prompt="Say hello.", max_new_tokens=6,
                           custom={"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_8bit_compute_dtype": "float16"},
                           seed=3, temperature=0.8, top_p=0.9, chat_template=False, api_name="/compare")
    assert [v["name"] for v in final["variants"]] == ["fp32", "custom"]
    assert final["settings"]["do_sample"] and final["settings"]["seed"] == 3
    assert any("bnb_8bit_compute_dtype" in w for w in final["variants"][1]["warnings"])


def test_bad_input_is_a_clear_error_and_the_app_keeps_serving(client):
    with pytest.raises(Exception, match="Unknown preset"):
        client.predict(model="SmolLM2-135M-Instruct", variants=["int9"], prompt="Hi", max_new_tokens=4,
                       api_name="/compare")
    with pytest.raises(Exception, match="unreachable"):
        client.predict(model="gpt2", variants=["int8"], prompt="Hi", max_new_tokens=4, api_name="/compare")
    final = client.predict(model="SmolLM2-135M-Instruct", variants=["fp32"], prompt="Hi", max_new_tokens=4,
                           api_name="/compare")
    assert final["done"]


def test_the_server_runs_on_the_preferred_malloc_when_the_machine_has_one(client):
    from quantplay import allocator

    status = client.predict(api_name="/status")
    library = allocator.choose(None)
    expected = "system" if library is None else allocator.active(f"7f00-7f01 r-xp 0 0:0 0 /usr/lib/{library}")
    assert status["malloc"] == expected


def test_evaluate_reports_each_figure_with_its_interval(client):
    report = client.predict(model="SmolLM2-135M-Instruct", variants=["int8"], prompts=["What is 2 + 2?", "Name a colour."],
                            max_new_tokens=6, api_name="/evaluate")
    assert report["variants"] == ["int8"] and report["prompts_scored"] == 2 and report["tokens"] > 0
    for key, s in report["results"]["int8"].items():
        assert s["low"] <= s["value"] <= s["high"], key
    assert 0 < report["results"]["int8"]["kl_mean"]["value"] < 1
    with pytest.raises(Exception, match="at least one variant"):
        client.predict(model="SmolLM2-135M-Instruct", variants=[], prompts=["Hi"], api_name="/evaluate")
