"""Many users at once against one launched app: no failures, no deadlock, memory under the budget,
each variant loaded once, Stop and disconnects ending only their own generation."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from gradio_client import Client
from server import running_app

pytestmark = [pytest.mark.api, pytest.mark.slow]
BUNDLED = "SmolLM2-135M-Instruct"
PROMPTS = ["What is the capital of France?", "Name a colour.", "What is 2 + 2?"]
QUANTIZED = ["int8", "nf4", "fp4", "nf4-dq"]
SESSIONS = 8


def hammer(url: str, seconds: float, seed: int, results: list, errors: list) -> None:
    rng = random.Random(seed)
    client = Client(url, verbose=False)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        variants = rng.sample(QUANTIZED, rng.choice([1, 2]))
        prompt = rng.choice(PROMPTS)
        try:
            final = client.predict(model=BUNDLED, variants=variants, prompt=prompt, max_new_tokens=8,
                                   api_name="/compare")
            results.append((prompt, final))
        except Exception as exc:  # counted: the test expects none
            errors.append(repr(exc))


def run_sessions(url: str, seconds: float, proc) -> tuple[list, list, dict]:
    """SESSIONS clients for `seconds`; meanwhile the server's RSS and its cache's accounting are sampled."""
    results, errors = [], []
    server = psutil.Process(proc.pid)
    monitor = Client(url, verbose=False)
    # the process without models: after one small request, less what its cache then holds
    monitor.predict(model=BUNDLED, variants=["fp32"], prompt="Hi", max_new_tokens=1, api_name="/compare")
    status = monitor.predict(api_name="/status")
    memory = {"base": server.memory_info().rss - status["resident_bytes"], "rss": [], "resident": []}
    threads = [threading.Thread(target=hammer, args=(url, seconds, i, results, errors)) for i in range(SESSIONS)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        memory["rss"].append(server.memory_info().rss)
        memory["resident"].append(monitor.predict(api_name="/status")["resident_bytes"])
        time.sleep(0.25)
    for t in threads:
        t.join(600)
    assert not any(t.is_alive() for t in threads), "a session never finished: deadlock?"
    return results, errors, memory


def check_outputs(results):
    assert results
    reference = {}
    for prompt, final in results:
        assert final["done"]
        bad = [(v["name"], v["status"], v["error"], v["text"]) for v in final["variants"]
               if v["status"] != "done" or not v["text"]]
        assert not bad, bad
        # greedy decoding: the fp32 answer to a prompt is the same in every session
        reference.setdefault(prompt, final["variants"][0]["text"])
        assert final["variants"][0]["text"] == reference[prompt]


@pytest.fixture(scope="module", autouse=True)
def warm_disk_cache():
    """Quantized weights on disk before the apps start, so every load's peak is its final size and the
    budgets below mean the same on a fresh CI machine as on a developer's."""
    from quantplay import catalog
    from quantplay.loader import ModelCache
    from quantplay.presets import PRESETS

    cache = ModelCache(budget_bytes=8 * 2**30)
    source = catalog.resolve(BUNDLED)
    for name in QUANTIZED:
        cache.get(source, PRESETS[name], "cpu")
        cache.unload()


def test_eight_sessions_for_two_minutes_with_a_budget_that_fits_all(fast_malloc):
    budget = 2 * 2**30
    with running_app({"QUANTPLAY_MEMORY_BUDGET": f"{budget}B"}) as (url, proc):
        results, errors, memory = run_sessions(url, float(os.environ.get("QUANTPLAY_SOAK_SECONDS", 120)), proc)
        status = Client(url, verbose=False).predict(api_name="/status")
    assert errors == []
    check_outputs(results)
    assert len(results) >= SESSIONS
    assert max(memory["resident"]) <= budget  # the cache's own accounting
    assert max(memory["rss"]) - memory["base"] < budget  # and what the process really holds beyond its code
    used = {v["name"] for _, final in results for v in final["variants"]}
    assert status["loads"] == len(used)  # each (model, preset) loaded once
    assert status["evictions"] == [] and status["live_streams"] == 0
    assert status["malloc"] != "system"


def test_a_small_budget_evicts_instead_of_failing():
    with running_app({"QUANTPLAY_MEMORY_BUDGET": "1000MiB"}) as (url, proc):
        results, errors, memory = run_sessions(url, 45, proc)
        status = Client(url, verbose=False).predict(api_name="/status")
    assert errors == []
    check_outputs(results)
    assert status["evictions"], "the budget was meant to force evictions"
    assert max(memory["resident"]) <= 1000 * 2**20


@pytest.fixture(scope="module")
def app():
    with running_app() as (url, proc):
        yield url, proc


def live(url):
    return Client(url, verbose=False).predict(api_name="/status")["live_streams"]


def test_stop_ends_only_that_sessions_generation(app):
    url, _ = app
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    long_job = a.submit(model=BUNDLED, variants=["nf4"], prompt="Tell a long story.", max_new_tokens=400,
                        api_name="/compare")
    deadline = time.monotonic() + 120
    while live(url) < 2 and time.monotonic() < deadline:  # fp32 + nf4 of session a are generating
        time.sleep(0.2)
    other = b.submit(model=BUNDLED, variants=["int8"], prompt="Name a colour.", max_new_tokens=48, api_name="/compare")
    time.sleep(1.0)
    long_job.cancel()  # the Stop button does this for its own session
    deadline = time.monotonic() + 30
    while live(url) > 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live(url) <= 2  # a's two streams ended; b's may still run
    final = other.result(timeout=300)
    assert final["done"] and all(v["status"] == "done" for v in final["variants"])
    assert live(url) == 0


DISCONNECTING_CLIENT = """
import sys
from gradio_client import Client
job = Client(sys.argv[1], verbose=False).submit(model="SmolLM2-135M-Instruct", variants=["nf4"],
    prompt="Tell a long story.", max_new_tokens=400, api_name="/compare")
for frame in job:
    if any(v["new_tokens"] > 2 for v in frame["variants"]):
        print("streaming", flush=True)
        break
import time; time.sleep(60)
"""


def test_a_client_that_disconnects_ends_its_generation(app):
    url, _ = app
    client = subprocess.Popen([sys.executable, "-c", DISCONNECTING_CLIENT, url], stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "streaming"
    assert live(url) == 2
    client.send_signal(signal.SIGKILL)  # the connection drops mid-stream
    client.wait(30)
    deadline = time.monotonic() + 30
    while live(url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live(url) == 0, "generation kept running for a client that is gone"
