"""Topic names: everything of one job lives under ``edgezo/<run>/`` (see PROTOCOL.md)."""

from __future__ import annotations

from edgezo.names import check_name

ROOT = "edgezo"

__all__ = ["ROOT", "Topics", "check_name"]


class Topics:
    def __init__(self, run: str):
        self.run = run
        self.prefix = f"{ROOT}/{run}"
        self.announce = f"{self.prefix}/announce"
        self.round = f"{self.prefix}/round"
        self.update = f"{self.prefix}/update"
        self.all_results = f"{self.prefix}/result/+"
        self.all_status = f"{self.prefix}/status/+"
        self.all_logreq = f"{self.prefix}/logreq/+"

    def result(self, device: str) -> str:
        return f"{self.prefix}/result/{device}"

    def status(self, device: str) -> str:
        return f"{self.prefix}/status/{device}"

    def logreq(self, device: str) -> str:
        return f"{self.prefix}/logreq/{device}"

    def log(self, device: str) -> str:
        return f"{self.prefix}/log/{device}"

    def device_of(self, topic: str) -> str:
        """The device a per-device topic belongs to (the last level): what the ACL vouches for."""
        return topic.rsplit("/", 1)[-1]

    def kind_of(self, topic: str) -> str:
        """'announce', 'round', 'update', 'result', 'status', 'logreq' or 'log'."""
        rest = topic[len(self.prefix) + 1 :] if topic.startswith(self.prefix + "/") else ""
        return rest.split("/", 1)[0]
