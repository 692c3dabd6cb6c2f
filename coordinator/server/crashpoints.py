"""Named points where a coordinator can be made to die, for crash-resume tests and the reliability
benchmark: ``EDGEZO_CRASH_AT=<point>:<round>`` SIGKILLs the process when it reaches that point of
that round (as a power cut would: no cleanup, no flush). Unset, a point costs one dict lookup.

Points, in the order a round passes them: ``appended`` (the seed-log line is on disk),
``published`` (the update went out), ``checkpointed``, ``announced``, ``recorded`` (the metrics row).
"""

from __future__ import annotations

import os
import signal

POINTS = ("appended", "published", "checkpointed", "announced", "recorded")


def crash_point(point: str, rnd: int) -> None:
    if os.environ.get("EDGEZO_CRASH_AT") == f"{point}:{rnd}":
        os.kill(os.getpid(), signal.SIGKILL)
