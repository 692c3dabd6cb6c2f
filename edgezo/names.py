"""Names that become MQTT topic levels (runs, devices): one check for the core and the coordinator.

Why in the core: ``edgezo.signing`` checks the device ids of an enrolment file with it, and the core
imports nothing from ``edgezo.coordinator`` (tests/test_architecture.py); the coordinator's topics
(``coordinator/wire/topics.py``) use the same rule, so a name the enrolment accepts is a valid topic.
"""

from __future__ import annotations

import re

from edgezo.errors import EdgezoError

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_name(kind: str, name: str) -> str:
    """Run and device names become topic levels, so MQTT's special characters are refused."""
    if not _NAME.match(name or ""):
        raise EdgezoError(f"{kind} name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (it is used in MQTT topics)")
    return name
