"""The one error LIME raises for what it is given, in a module of its own so that every part can raise it."""


class LimeInputError(ValueError):
    """A parameter or input LIME cannot work with; the message names it and the fix."""
