"""User-facing errors: the CLI prints these as one line (no traceback) and exits non-zero."""


class EdgezoError(Exception):
    """A problem the user can fix: the message names it and says what to do."""
