"""The trained tensors as a job announces them (PROTOCOL.md section 9.2), one definition for the
coordinator, which announces them (``log_service``), and the device, which checks its own against
them (``device.check_trainable``).

Why its own module: the device must not import the server side (``log_service``) to agree with
it, and the list is a wire-level fact, not a model-layer one (the model layer's selection is
``edgezo.backends.hf.trainable.trainable_layout``).
"""

from __future__ import annotations


def announced_trainables(ex) -> list[tuple[str, int, int]]:
    """``[(name, block, numel), ...]`` in fingerprint order, from the shared model layer's
    executors (``SplitExecutor.names``/``name_block``/``tensor_numel``); an executor without them
    (a test double) announces none, which devices do not check."""
    names, blocks, numel = (getattr(ex, a, None) for a in ("names", "name_block", "tensor_numel"))
    if names is None or blocks is None or numel is None:
        return []
    return [(n, int(blocks[n]), int(numel[n])) for n in names]
