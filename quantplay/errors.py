"""The one error type a person can act on.

Everything quantplay refuses (a bad request, a model that is not available, a
memory budget that does not fit, a malformed setting) is a `QuantplayError`,
with a message written for a person. The CLI prints it as one line, the API and
the page show it as a `gr.Error`; anything else is a bug and is logged as one.
`QuantplayError` is a ValueError so that code written against the earlier
ValueError-based checks keeps working.
"""

from __future__ import annotations


class QuantplayError(ValueError):
    """A request, model or setting that cannot work here; the message says what to do instead."""


class ConfigError(QuantplayError):
    """A malformed setting (environment variable or argument), caught at start-up."""


class MemoryBudgetError(QuantplayError):
    """A load that cannot fit the memory budget, even after evicting idle models."""
