"""The one exception type that means "the user's input is wrong" (shown as one line, no traceback)."""


class SelfSupError(Exception):
    """A problem with the user's input or environment, explained in one line."""
