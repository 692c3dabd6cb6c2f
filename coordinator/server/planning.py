"""Per-device planning (``coordinate --plan``): what each device is assigned in a round.

Without planning every device gets the job's K, P1, P2 and batch. With it, a device's task comes
from the profile in its Status (else ``Planning.default_profile``) through
``edgezo.planner.plan_device``; a device nothing fits is left out of rounds. A device is planned
when it comes online and again when its profile or memory budget changes, never on the re-sent
statuses that follow a catch-up or a reconnect.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterable

from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.planner import Budget, NothingFits, plan_device
from edgezo.profiles import profile_from_dict

from edgezo.coordinator.wire import messages as m

if TYPE_CHECKING:  # pragma: no cover - planning is imported only when used (--plan)
    from edgezo.costmodel import ModelShape
    from edgezo.planner import Limits
    from edgezo.profiles import Profile

log = logging.getLogger("edgezo.coordinator")


@dataclass
class Planning:
    """Per-device planning (``coordinate --plan``): each device's K, P1, P2 and batch come from its
    profile (sent in its Status, else ``default_profile``) through ``edgezo.planner.plan_device``."""

    shape: ModelShape  # the job's model, as split
    tokens: int  # padded tokens per sequence of a typical batch of the job
    limits: Limits  # the job's K and batch, the caps on P1 and P2, the job's method
    round_seconds: float  # the round deadline: the time budget
    default_profile: Profile | None = None  # for devices that send none (None: they get the job's fixed work)
    safety: float = 0.85  # plan to this fraction of the deadline
    descent: Callable[[int, int], float] | None = None  # --p2 auto: the calibration's descent table (planner.plan_device)


class DevicePlanner:
    """Each device's task. ``planning`` is read at every call (None: the job's fixed work)."""

    def __init__(self, cfg: JobConfig, planning: Callable[[], Planning | None], say: Callable[[str], None]):
        self.cfg, self._planning, self.say = cfg, planning, say
        # device -> (what it was planned from, its task; None: nothing fits, left out of rounds)
        self.plans: dict[str, tuple[tuple, m.DeviceTask | None]] = {}

    def fixed_task(self, device: str) -> m.DeviceTask:
        return m.DeviceTask(device, self.cfg.local_steps, self.cfg.p1, self.cfg.p2, self.cfg.batch_size)

    def plan(self, device: str, status: m.Status) -> None:
        """Plan a device when it comes online, and again when its profile or memory budget changes."""
        if self._planning() is None:
            return
        key = (repr(status.profile), status.memory_gb)  # a device re-sends the same decoded dict: same repr
        known = self.plans.get(device)
        if known is not None and known[0] == key:
            return
        self.plans[device] = (key, self._plan_task(device, status))

    def _plan_task(self, device: str, status: m.Status) -> m.DeviceTask | None:
        """The device's task, or None when nothing fits it (then it is left out of rounds). A
        malformed profile is rejected with a logged reason and the device treated as sending none."""
        p = self._planning()
        profile, source = None, ""
        if status.profile:
            try:
                profile, source = profile_from_dict(dict(status.profile), where=f"the profile of device {device}"), "its own"
            except EdgezoError as e:  # names the bad key
                log.warning("rejected the profile of device %s: %s; treating it as a device without a profile", device, e)
        memory = status.memory_gb
        if memory != 0 and not (math.isfinite(memory) and memory > 0):
            log.warning("device %s sent memory budget %r GB; using its profile's memory_available_gb", device, memory)
            memory = 0.0
        if profile is None and p.default_profile is not None:
            profile, source = p.default_profile, "the --default-profile"
        if profile is None:
            task = self.fixed_task(device)
            self.say(f"plan for {device}: no profile, so the job's K {task.k}, P1 {task.p1}, P2 {task.p2}, batch {task.batch}")
            return task
        running = [b for b in profile.backends if b.name == status.backend]
        if running:  # the device already runs this backend (chosen at join): plan for it alone
            profile = replace(profile, backends=running)
        try:
            budget = Budget(p.round_seconds, memory or None, p.safety)
            plan = plan_device(profile, p.shape, p.tokens, budget, p.limits, device, descent=p.descent)
        except NothingFits as e:
            log.warning("device %s is left out of rounds (%s profile %r): %s", device, source, profile.name, e)
            return None
        except Exception as e:  # never let a device's figures stop the job
            why = str(e) if isinstance(e, EdgezoError) else f"{type(e).__name__}: {e}"
            log.warning("could not plan device %s from %s profile %r (%s); it gets the job's fixed work", device, source, profile.name, why)
            return self.fixed_task(device)
        w = plan.work
        self.say(f"plan for {plan.describe()}; from {source} profile {profile.name!r}")
        return m.DeviceTask(device, w.k, w.p1, w.p2, w.batch)

    def task_of(self, device: str) -> m.DeviceTask | None:
        """What ``device`` is assigned in a round (None: left out by the planner)."""
        if self._planning() is None:
            return self.fixed_task(device)
        known = self.plans.get(device)  # planned when it came online
        return known[1] if known is not None else self.fixed_task(device)

    def eligible(self, online: Iterable[str]) -> list[str]:
        """Online devices that can be given work (with --plan, those a plan fits)."""
        if self._planning() is None:
            return list(online)
        return [d for d in online if self.task_of(d) is not None]
