"""Test-only looks into a running ``RayEngine`` (what the package itself never needs to ask)."""

from __future__ import annotations


def worker_fingerprints(engine) -> list[dict[str, str]]:
    """Every worker's replicas' fingerprints (backend -> fingerprint) after the updates so far:
    each worker answers after applying every ``follow`` sent before (an actor runs its calls in
    order), so a test can check that the actors ended on the driver's model."""
    return engine.ray.get([worker.fingerprints.remote() for worker in engine.workers])
