"""A device takes its job from the coordinator's announcement: keys a newer coordinator added
are ignored and logged (PROTOCOL.md), never a crash of an older device."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from edgezo.config import JobConfig
from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.device.device import Device, DeviceSettings
from edgezo.coordinator.server.coordinator import shared_job
from toy_executor import QuadraticExecutor

DIGEST = "d" * 64


class ToyModel(QuadraticExecutor):
    kind = "causal"
    split = 2


def announcement(job: dict) -> m.Announce:
    return m.Announce(v=m.PROTOCOL_VERSION, run="newer", state="running", model=m.ModelRef("toy", "", DIGEST), job=job,
                      split=ToyModel.split, round=0, rounds=3, fingerprint="", log_chunk=50)


def test_a_device_ignores_job_keys_it_does_not_know(sst2_dir, caplog):
    job = shared_job(JobConfig(method="mezo", p1=3, rounds=3).validate())
    job |= {"aggregation_weights": "examples", "compression": {"kind": "topk", "k": 8}}  # a newer coordinator's keys
    device = Device(DeviceSettings("old-device", data=str(sst2_dir), train_samples=20), link=None,
                    build_executor=lambda cfg, task: (ToyModel(), SimpleNamespace(name="toy", digest=DIGEST)),
                    say=lambda line: None)
    received = m.decode(m.encode(announcement(job)), m.Announce)  # as it comes over the wire
    with caplog.at_level(logging.INFO, logger="edgezo.device"):
        device._setup(received)
    assert device.cfg.method == "mezo" and device.cfg.p1 == 3 and device.cfg.rounds == 3
    assert "aggregation_weights" in caplog.text and "compression" in caplog.text
