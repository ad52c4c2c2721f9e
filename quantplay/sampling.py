"""What a request asks of generation: `GenerationSettings` (greedy, or temperature + top-p
with a seed) and the sampler that gives each variant a random stream of its own.

`GenerationSettings.from_request` is the one place where a request's sampling knobs
(the CLI's flags, the API's fields, the page's controls) become settings. It knows
nothing about models or streams; `streaming.TokenStream` runs what it describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from .errors import QuantplayError


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # the benchmark forces a length; users leave it at 0
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    chat_template: bool = True

    @classmethod
    def from_request(cls, max_new_tokens: int = 64, temperature: float | None = 0.0, top_p: float = 1.0,
                     seed: int = 0, chat_template: bool = True) -> GenerationSettings:
        """The one reading of a request's sampling knobs, shared by the CLI, the API and the page.

        Temperature None or 0 means greedy (the default: differences then come from quantization
        alone); above 0 samples at that temperature with `top_p`. `validate.check_settings`
        checks the ranges; a negative or non-numeric temperature is refused here.
        """
        if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                        or temperature < 0):
            raise QuantplayError(f"temperature must be 0 (greedy) or a number above 0, not {temperature!r}.")
        if not temperature:
            return cls(max_new_tokens=max_new_tokens, top_p=top_p, seed=seed, chat_template=chat_template)
        return cls(max_new_tokens=max_new_tokens, do_sample=True, temperature=float(temperature), top_p=top_p,
                   seed=seed, chat_template=chat_template)


class SeededSampler(LogitsProcessor):
    """Temperature + top-p sampling with a private generator.

    It leaves only the drawn token finite, so greedy decoding then picks it:
    the random stream belongs to this variant, not to torch's global RNG.
    """

    def __init__(self, temperature: float, top_p: float, seed: int) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(dim=-1) - sorted_probs < self.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
        token = order.gather(-1, choice).to(scores.device)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, token, 0.0)
