"""`make gpu-check`: prove the CUDA path the first time a GPU is lent, in one short run.

Until then quantplay's CUDA code has only been reasoned about and tested on CPU. A
lent GPU machine comes with minutes of device time, no network, and perhaps only
torch, transformers and accelerate installed; at most 64 MiB of files can be brought
along. So this script

1. installs the wheels shipped beside the checkout (`.whl/`, fetched with the
   `pip download` lines in README) when bitsandbytes, psutil, greenlet or pytest are
   missing, into a private directory put on PYTHONPATH (nothing system-wide);
2. runs `pytest -m gpu tests/test_gpu.py`;
3. runs `python -m quantplay bench --random-init --quick` on the bundled model's
   shipped config (SmolLM2-135M) and on a ~1B one (TinyLlama-1.1B). Random weights
   measure speed and memory without weights to carry; their tokenizer is the tests'
   locally trained one (tests/tiny.py: 512 tokens, no file to ship), as no real
   tokenizer is available offline; the prompt is tokenized differently, nothing else;
4. writes a markdown report (GPU, versions, test results, the bench tables).

Every step runs in a child process with a time limit drawn from one overall budget
(default 330 s, under the 6 minutes a check may take); a step that runs out is
reported as such and the next one still runs. Without CUDA it says "no CUDA GPU",
runs the CPU-safe steps (wheels, versions, collecting the gpu tests) and stops.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("bitsandbytes", "psutil", "greenlet", "pytest", "accelerate", "safetensors", "huggingface_hub")
BENCH_MODELS = ("SmolLM2-135M-Instruct", "TinyLlama/TinyLlama-1.1B-Chat-v1.0")
SITE = Path("/tmp/quantplay-gpu-check/site")
WORK = Path("/tmp/quantplay-gpu-check/work")

PROBE = """
import json, sys, torch, transformers, accelerate
info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": transformers.__version__, "accelerate": accelerate.__version__,
        "cuda_available": torch.cuda.is_available()}
try:
    import bitsandbytes
    info["bitsandbytes"] = bitsandbytes.__version__
except Exception as exc:
    info["bitsandbytes"] = f"not importable: {type(exc).__name__}: {exc}"
if info["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", total_bytes=total, free_bytes=free,
                gpu_count=torch.cuda.device_count())
print(json.dumps(info))
"""

RANDOM_INIT = """
import sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from tiny import build_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from quantplay.estimator import load_config
target = Path(sys.argv[2])
model_config, _ = load_config(sys.argv[1])
model_config.dtype = "float32"
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
model.save_pretrained(target)
AutoTokenizer.from_pretrained(build_tiny_model(target.parent / "_tokenizer", hidden=16, layers=1)).save_pretrained(target)
"""


class Budget:
    """Seconds left of the whole check; each step gets what remains, capped."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float) -> float:
        return max(0.0, min(cap, self.end - time.monotonic()))


def missing_modules() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def install_wheels(wheels: Path, env: dict[str, str], dry_run: bool) -> list[str]:
    """Install every shipped wheel into SITE (no index, no deps) when something is missing; notes."""
    missing = missing_modules()
    if not missing:
        return ["every needed package was already installed; no wheels used"]
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        return [f"missing {', '.join(missing)} and no wheels in {wheels}/: see README (Platforms → CUDA)"]
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(SITE),
               *map(str, files)]
    if dry_run:
        return [f"would run: {' '.join(command)}"]
    if importlib.util.find_spec("pip") is None:  # a wheel is a zip laid out for site-packages: unpack it
        for wheel in files:
            zipfile.ZipFile(wheel).extractall(SITE)
    else:
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            return [f"pip install of the shipped wheels failed: {out.stderr.strip()[-500:]}"]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), env.get("PYTHONPATH", "")) if p)
    return [f"missing {', '.join(missing)}: installed {', '.join(f.name for f in files)} into {SITE}"]


def run_step(name: str, command: list[str], env: dict[str, str], seconds: float) -> dict:
    """One child process under a time limit: its exit status, time and output tail."""
    if seconds < 5:
        return {"name": name, "rc": None, "seconds": 0.0, "output": "not run: the check's time budget is spent"}
    start = time.monotonic()
    # its own session, so a timeout ends the bench's children (fresh-process loads) with it
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                             start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=seconds)
        rc = child.returncode
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        stdout, stderr = child.communicate()
        rc, stderr = "timeout", _text(stderr) + f"\n(stopped after {seconds:.0f} s)"
    return {"name": name, "rc": rc, "seconds": time.monotonic() - start, "stdout": stdout, "stderr": stderr}


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def probe(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-800:]}
    return json.loads(out.stdout)


def random_init_dir(model: str, cache_dir: Path) -> Path:
    """Where `bench --random-init` looks for the model (bench_measure.random_init_model's layout)."""
    return cache_dir / "random-init" / model.replace("/", "--")


def bench_steps(env: dict[str, str], budget: Budget, cache_dir: Path) -> list[dict]:
    """Build each random-init model (our tokenizer: see the docstring), then bench it."""
    steps = []
    for model in BENCH_MODELS:
        target = random_init_dir(model, cache_dir)
        if not (target / "config.json").is_file():
            steps.append(run_step(f"random weights for {model}", [sys.executable, "-c", RANDOM_INIT, model,
                                                                  str(target), str(ROOT / "tests")], env, budget.left(120)))
        steps.append(run_step(f"bench {model}", [sys.executable, "-m", "quantplay", "bench", "--model", model,
                                                 "--random-init", "--quick"], env, budget.left(200)))
    return steps


def render(info: dict, notes: list[str], steps: list[dict], seconds: float) -> str:
    gpu = (f"{info['gpu']} (compute capability {info['capability']}, {info['total_bytes'] / 2**30:.1f} GiB, "
           f"{info['free_bytes'] / 2**30:.1f} GiB free)") if info.get("gpu") else "no CUDA GPU"
    lines = ["# quantplay gpu-check", "", f"{time.strftime('%Y-%m-%d %H:%M')}; {gpu}; {seconds:.0f} s in all.", "",
             "| package | version |", "|---|---|"]
    lines += [f"| {k} | {info.get(k, '–')} |" for k in ("python", "torch", "cuda", "transformers", "accelerate",
                                                           "bitsandbytes")]
    if "error" in info:
        lines += ["", f"Probe failed: `{info['error']}`"]
    lines += ["", "## Packages", ""] + [f"- {n}" for n in notes]
    for step in steps:
        status = "not run" if step["rc"] is None else ("passed" if step["rc"] == 0 else f"failed (exit {step['rc']})")
        lines += ["", f"## {step['name']}: {status}, {step['seconds']:.0f} s", ""]
        if step["name"].startswith("bench") and step["rc"] == 0:
            lines.append(step["stdout"].strip())
        else:
            tail = (step.get("stdout", "") + step.get("stderr", "") or step.get("output", "")).strip()[-3000:]
            lines += ["```", tail, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", default="gpu-report.md", help="markdown report (default gpu-report.md)")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="wheels shipped beside the checkout")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for the whole check")
    parser.add_argument("--dry-run", action="store_true", help="say what would run; run only the probes")
    args = parser.parse_args(argv)
    start, budget = time.monotonic(), Budget(args.budget)
    cache_dir = WORK / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "QUANTPLAY_CACHE_DIR": str(cache_dir)}
    notes = install_wheels(args.wheels, env, args.dry_run)
    info = probe(env)
    pytest_cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rs", "-p", "no:cacheprovider"]
    if args.dry_run:
        steps = [run_step("collect the gpu tests", [*pytest_cmd, "--collect-only"], env, budget.left(60))]
        notes.append("dry run: the tests were only collected and the benches not run")
    else:
        steps = [run_step("pytest -m gpu", pytest_cmd, env, budget.left(150))]
        if info.get("cuda_available"):
            steps += bench_steps(env, budget, cache_dir)
        else:
            notes.append("no CUDA GPU: the gpu tests skip and the benches are not run")
    Path(args.report).write_text(render(info, notes, steps, time.monotonic() - start), encoding="utf-8")
    print(f"{'no CUDA GPU; ' if not info.get('cuda_available') else ''}report written to {args.report}")
    failed = [s["name"] for s in steps if s["rc"] != 0]
    if failed:
        print(f"not passed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
