"""The command line's arguments: one parser, every subcommand's flags and their defaults.

It knows nothing about what a command does: `__main__` hands it the function for each
command's name, so the commands and their flags can be read apart (the CLI was one
400-line file before).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from . import __version__, catalog
from .presets import PRESETS


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: use a port number from 1 to 65535")
    return int(text)


def build_parser(handlers: dict[str, Callable[[argparse.Namespace], int]], description: str) -> argparse.ArgumentParser:
    """Every command's arguments; `handlers` maps each command's name to the function that runs it (`args.func`)."""
    parser = argparse.ArgumentParser(prog="python -m quantplay", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"quantplay {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log loads and evictions")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_model_commands(sub, handlers)
    _add_other_commands(sub, handlers)
    return parser


def _add_model_commands(sub, handlers) -> None:
    """The commands that load or measure models."""
    p = sub.add_parser("compare", help="stream fp32 and quantized variants side by side")
    p.add_argument("--model", default=catalog.BUNDLED_NAME)
    p.add_argument("--variants", default="fp32,int8,nf4", help="comma-separated presets: " + ",".join(PRESETS))
    p.add_argument("--custom", help='BitsAndBytesConfig fields as JSON, e.g. \'{"load_in_4bit": true}\'')
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="sample at this temperature (default 0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, with --temperature (default 1.0)")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--device-map", default="auto", choices=["auto", "cpu", "cuda:0"])
    p.add_argument("--json", action="store_true", help="print the final result object and nothing else on stdout")
    p.set_defaults(func=handlers["compare"])

    p = sub.add_parser("estimate", help="weight memory of every preset, from the model config alone")
    p.add_argument("--model", default=catalog.BUNDLED_NAME)
    p.add_argument("--device", choices=["cpu", "cuda:0"], help="where the model would live (default: this machine's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handlers["estimate"])

    p = sub.add_parser("inspect", help="each quantized layer's weight error against the checkpoint")
    p.add_argument("--model", default=catalog.BUNDLED_NAME)
    p.add_argument("--variant", default="nf4", help="a quantized preset: " + ",".join(n for n in PRESETS if n != "fp32"))
    p.add_argument("--custom", help="BitsAndBytesConfig fields as JSON, instead of --variant")
    p.add_argument("--device-map", default="auto", choices=["auto", "cpu", "cuda:0"])
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="every layer, with the 4-bit code shares")
    form.add_argument("--csv", action="store_true", help="one row per layer")
    p.set_defaults(func=handlers["inspect"])

    p = sub.add_parser("evaluate", help="agreement with fp32 over many prompts, with 95% intervals")
    p.add_argument("--model", default=catalog.BUNDLED_NAME)
    p.add_argument("--variants", default="int8,nf4", help="quantized presets to score against fp32, comma-separated")
    p.add_argument("--prompts", help="a text file, one prompt per line (default: the ~30 shipped prompts)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="fp32's continuation per prompt (default 32)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples over prompts (default 1000)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="every figure, the KL values and the reference points")
    form.add_argument("--csv", action="store_true", help="one row per variant and statistic")
    p.set_defaults(func=handlers["evaluate"])

    p = sub.add_parser("bench", help="measure the playground against bare transformers")
    p.add_argument("--model", default=catalog.BUNDLED_NAME)
    p.add_argument("--variants", default="fp32,int8,nf4")
    p.add_argument("--quick", action="store_true", help="one repeat of 16 tokens: checks that it runs")
    p.add_argument("--repeats", type=int, help="A/B repeats (default 7; 1 with --quick)")
    p.add_argument("--random-init", action="store_true",
                   help="random weights from the model's config: speed and memory without the weights")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handlers["bench"])


def _add_other_commands(sub, handlers) -> None:
    """The commands that list, configure, serve and load-test."""
    p = sub.add_parser("cache", help="the disk cache of quantized weights")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("name", nargs="?", help="with clear: only entries whose name contains this")
    p.add_argument("--json", action="store_true", help="with list: the entries as JSON")
    p.set_defaults(func=handlers["cache"])

    p = sub.add_parser("presets", help="list the named presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handlers["presets"])

    p = sub.add_parser("models", help="list the model choices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handlers["models"])

    p = sub.add_parser("config", help="every effective setting and where it came from (default, environment)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handlers["config"])

    p = sub.add_parser("serve", help="start the page, as `python app.py` does")
    p.add_argument("--host", help="address to listen on (default: GRADIO_SERVER_NAME, else 127.0.0.1)")
    p.add_argument("--port", type=_port, help="port to listen on (default: GRADIO_SERVER_PORT, else 7860)")
    p.add_argument("--share", action="store_true", help="also make a public gradio share link (or QUANTPLAY_SHARE=1)")
    p.set_defaults(func=handlers["serve"])

    p = sub.add_parser("loadtest", help="N gradio_client sessions at once against a running app")
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--url", default="http://127.0.0.1:7860/")
    p.add_argument("--same-prompt", action="store_true", help="every session sends the first example prompt")
    p.add_argument("--one-by-one", action="store_true", help="the same sessions one after another: the lone baseline")
    p.add_argument("--variants", default="fp32,nf4")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--model", default=catalog.BUNDLED_NAME)
    p.set_defaults(func=handlers["loadtest"])
