"""quantplay: see what quantization does to a language model.

The package is the library API (`library.py`): `quantplay.compare`, `stream`,
`estimate` and `launch`, and `QuantplayError`, the one error they raise for a
request that cannot work. Importing it is light (no torch, transformers or gradio
until a function is called) and never re-executes the process.
"""

from __future__ import annotations

import logging

from .errors import QuantplayError
from .library import compare, estimate, launch, stream

__version__ = "0.1.0"
__all__ = ["QuantplayError", "__version__", "compare", "estimate", "launch", "stream"]


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
