"""quantplay: see what quantization does to a language model."""

from __future__ import annotations

import logging

__version__ = "0.1.0"


class _DropRepeats(logging.Filter):
    """Drops bitsandbytes' per-matmul notice ("MatMul8bitLt: inputs will be cast…").

    On CPU it fires on every int8 matmul: thousands of identical lines per answer.
    What it says (LLM.int8 computes in float16) is reported once, in the int8
    preset's description and the bnb_8bit_compute_dtype note.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def quiet_bitsandbytes() -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropRepeats) for f in logger.filters):
        logger.addFilter(_DropRepeats())


quiet_bitsandbytes()
