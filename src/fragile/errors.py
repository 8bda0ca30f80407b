"""Exceptions raised at the public boundary of ``fragile``."""


class FragileError(ValueError):
    """Base class: bad input or an unsupported configuration, with a message naming the problem."""


class UnsupportedModelError(FragileError):
    """The model contains something a method cannot handle (a layer, a functional activation)."""
