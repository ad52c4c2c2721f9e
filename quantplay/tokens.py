"""The tokenizer side of a comparison: a prompt into ids, and ids back into text as they stream.

`encode_prompt` applies the chat template (when asked and when the tokenizer has
one) and keeps a long prompt's end; `IncrementalDecoder` turns a growing id list
into text without re-decoding it all each step. Both take a tokenizer and know
nothing about models, generation or the other variants.
"""

from __future__ import annotations


def encode_prompt(tokenizer, prompt: str, chat_template: bool, max_tokens: int) -> tuple[list[int], list[str]]:
    """The prompt's ids (at most `max_tokens`: a longer prompt keeps its end) and any warnings."""
    warnings = []
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
    else:
        if chat_template:
            warnings.append("This tokenizer has no chat template; the prompt is used as plain text.")
        ids = tokenizer(prompt)["input_ids"]
    ids = list(ids)
    if len(ids) > max_tokens:
        warnings.append(f"The prompt is {len(ids)} tokens; only its last {max_tokens} are used "
                        "(QUANTPLAY_MAX_PROMPT_TOKENS).")
        ids = ids[-max_tokens:]
    return ids, warnings


class IncrementalDecoder:
    """Detokenizes a growing id list without re-decoding it all each step.

    Decodes a short window (the last few ids) and emits only the new, complete
    characters; a multi-byte character split across tokens waits for its end.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0
        self._read = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            new = after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
            self.text += new
            return new
        return ""

    def finish(self) -> str:
        """The exact full decode, identical to decoding all ids at once."""
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self.text
