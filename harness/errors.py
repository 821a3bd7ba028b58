"""Errors the harness raises for bad input; each message says what was wrong and what to do."""


class HarnessError(Exception):
    """Base of every error the harness reports to a user as one clear line."""


class ModelNotFoundError(HarnessError):
    pass


class AdapterError(HarnessError):
    pass


class InputError(HarnessError):
    """A note that cannot be processed (empty, over the context length)."""
