"""User-facing errors: the CLI prints these as one line (no traceback) and exits non-zero."""


class EdgezoError(Exception):
    """A problem the user can fix: the message names it and says what to do."""


class ConfigError(EdgezoError):
    """An option or a configuration key has a wrong type, range or name."""


class OutputError(EdgezoError):
    """An output or state folder cannot be written, or holds a run that would be overwritten."""


class JobStopped(EdgezoError):
    """Raised by a per-round callback to stop a job after that round; the run stays resumable
    (``simulate --resume``)."""
