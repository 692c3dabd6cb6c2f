"""The canonical perturbation generator: NumPy reference implementation.

Counter-based, so any slice of any tensor is generated independently, in any order:

* ``k0, k1`` are the low and high 32 bits of a tensor key (``edgezo.keys``);
* word ``c`` (a uint32 counter) is ``lowbias32(lowbias32(c ^ k0) ^ k1)`` where ``lowbias32`` is
  Wellons' 32-bit integer hash: ``x ^= x>>16; x *= 0x7feb352d; x ^= x>>15; x *= 0x846ca68b; x ^= x>>16``
  (multiplications modulo 2**32);
* **Rademacher** (default): element ``e`` is ``1 - 2*((word(e // 32) >> (e % 32)) & 1)``: one hash
  gives 32 signs, and the result is bit-exact on every backend;
* **Gaussian**: element ``e`` uses words ``2e`` and ``2e+1``: ``u1 = (w0 + 1) / 2**32``,
  ``u2 = w1 / 2**32``, ``z = sqrt(-2 ln u1) cos(2 pi u2)`` in float64, rounded to float32
  (backends agree within one float32 ulp, since their float64 ``log``/``cos`` may differ in the last bit).

Native implementations (``edgezo.backends.*``) must equal this one; tests hold golden vectors.
"""

from __future__ import annotations

import numpy as np

RADEMACHER = "rademacher"
GAUSSIAN = "gaussian"
DISTRIBUTIONS = (RADEMACHER, GAUSSIAN)
BITS_PER_WORD = 32


def split_key(key: int) -> tuple[int, int]:
    return key & 0xFFFFFFFF, (key >> 32) & 0xFFFFFFFF


def _lowbias32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def words(key: int, start: int, count: int) -> np.ndarray:
    """The generator's uint32 words for counters ``start .. start+count-1``."""
    k0, k1 = split_key(key)
    counters = np.arange(start, start + count, dtype=np.uint64).astype(np.uint32)
    with np.errstate(over="ignore"):
        return _lowbias32(_lowbias32(counters ^ np.uint32(k0)) ^ np.uint32(k1))


def rademacher(key: int, start: int, count: int) -> np.ndarray:
    """Elements ``start .. start+count-1`` of the ±1 vector for ``key`` (float32)."""
    first_word = start // BITS_PER_WORD
    last_word = (start + count - 1) // BITS_PER_WORD
    w = words(key, first_word, last_word - first_word + 1)
    bits = (w[:, None] >> np.arange(BITS_PER_WORD, dtype=np.uint32)[None, :]) & np.uint32(1)
    signs = (1 - 2 * bits.astype(np.int8)).reshape(-1).astype(np.float32)
    offset = start - first_word * BITS_PER_WORD
    return signs[offset : offset + count]


def gaussian(key: int, start: int, count: int) -> np.ndarray:
    """Elements ``start .. start+count-1`` of the standard normal vector for ``key`` (float32)."""
    w = words(key, 2 * start, 2 * count).astype(np.float64).reshape(count, 2)
    u1 = (w[:, 0] + 1.0) / 4294967296.0
    u2 = w[:, 1] / 4294967296.0
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


def generate(key: int, start: int, count: int, distribution: str = RADEMACHER) -> np.ndarray:
    if distribution == RADEMACHER:
        return rademacher(key, start, count)
    if distribution == GAUSSIAN:
        return gaussian(key, start, count)
    raise ValueError(f"unknown perturbation distribution {distribution!r}; use one of {DISTRIBUTIONS}")
