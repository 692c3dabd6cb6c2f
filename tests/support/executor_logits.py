"""The verbalizer logits of a split executor (any backend) as NumPy, to compare backends."""

from __future__ import annotations

import numpy as np


def verbalizer_logits(executor, batch, perturbation=()) -> np.ndarray:
    """[B, labels] float32 logits of the verbalizer tokens: both blocks under one perturbation."""
    return np.asarray(executor._block2_logits(executor._block1(batch, perturbation), perturbation))
