"""User-facing errors: the CLI turns these into a one-line message and exit code 2."""


class EmqError(Exception):
    """Bad input or an impossible request; the message says what is wrong and what to do."""
