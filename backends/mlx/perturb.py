"""Canonical perturbations in MLX, equal to the NumPy reference in ``edgezo.perturb``.

MLX has real uint32 arithmetic (multiplication wraps modulo 2**32, shifts are logical), so the
hash is written exactly as in the reference. Rademacher updates work on a ``[rows, 32]`` view of
the weights (rows starting on a word boundary): the hash runs once per row, and each element's
``±scale`` is made in the bits (its sign bit xor-ed into ``scale``'s), so ``w + scale * z`` is
exact-then-one-rounding as in the reference and costs four elementwise passes. Gaussian values
are computed in float64 (MLX has float64 on the CPU only, so that part runs on the CPU stream)
with a cosine of our own (MLX's float64 ``cos`` is only float32-accurate) and rounded to float32:
they agree with NumPy within one float32 ulp (in practice bit for bit).

Arrays in MLX are immutable: ``add_scaled`` returns a new array. It works in chunks of ``CHUNK``
elements, so no full-size temporary of the generated vector is ever materialised.
"""

from __future__ import annotations

import math

import mlx.core as mx

from edgezo.perturb import BITS_PER_WORD, GAUSSIAN, RADEMACHER, split_key

CHUNK = 1 << 22  # elements per generated chunk (a multiple of 32)
_M1 = 0x7FEB352D
_M2 = 0x846CA68B


def _u32(value: int) -> mx.array:
    return mx.array(value & 0xFFFFFFFF, dtype=mx.uint32)


def _lowbias32(x: mx.array) -> mx.array:
    x = x ^ (x >> 16)
    x = x * _u32(_M1)
    x = x ^ (x >> 15)
    x = x * _u32(_M2)
    return x ^ (x >> 16)


def _hash(counters: mx.array, k0: mx.array, k1: mx.array) -> mx.array:
    return _lowbias32(_lowbias32(counters ^ k0) ^ k1)


def _counters(start: int, count: int) -> mx.array:
    """uint32 counters ``start .. start+count-1`` modulo 2**32 (as the reference wraps them)."""
    first = start & 0xFFFFFFFF
    return mx.arange(count, dtype=mx.uint32) + _u32(first)


def words(key: int, start: int, count: int) -> mx.array:
    """The generator's uint32 words for counters ``start .. start+count-1``."""
    k0, k1 = split_key(key)
    return _hash(_counters(start, count), _u32(k0), _u32(k1))


_SHIFTS = None


def _shifts() -> mx.array:
    global _SHIFTS
    if _SHIFTS is None:
        _SHIFTS = mx.arange(BITS_PER_WORD, dtype=mx.uint32)[None, :]
    return _SHIFTS


def _signs(w: mx.array, dtype) -> mx.array:
    """[R] words -> [R, 32] signs, bit k of word r -> element 32 r + k."""
    bits = (w[:, None] >> _shifts()) & _u32(1)
    return (1 - 2 * bits.astype(mx.int32)).astype(dtype)


def rademacher(key: int, start: int, count: int, dtype=mx.float32) -> mx.array:
    """Elements ``start .. start+count-1`` of the ±1 vector for ``key``."""
    first_word = start // BITS_PER_WORD
    last_word = (start + count - 1) // BITS_PER_WORD
    w = words(key, first_word, last_word - first_word + 1)
    signs = _signs(w, dtype).reshape(-1)
    offset = start - first_word * BITS_PER_WORD
    return signs[offset : offset + count]


# Taylor coefficients of cos and sin, highest degree first (float64 Horner on |t| <= pi/4: the
# truncation error is below 1e-17, far under float64 rounding).
_COS = [(-1) ** k / math.factorial(2 * k) for k in range(9, -1, -1)]  # t^18 .. t^0 (in t^2)
_SIN = [(-1) ** k / math.factorial(2 * k + 1) for k in range(9, -1, -1)]  # t^19 .. t^1 (in t^2, times t)


def _horner(x: mx.array, coeffs: list[float]) -> mx.array:
    acc = mx.full(x.shape, coeffs[0], dtype=mx.float64)
    for c in coeffs[1:]:
        acc = acc * x + c
    return acc


# pi/2 split for Cody-Waite reduction (fdlibm's 33 + 33 + 53 bits): q * _PIO2_1 and q * _PIO2_2
# are exact for the small quadrant numbers q used here (q <= 4).
_PIO2_1 = 1.57079632673412561417e00
_PIO2_2 = 6.07710050630396597660e-11
_PIO2_3 = 2.02226624879595063154e-21


def _cos(x: mx.array) -> mx.array:
    """``cos(x)`` in float64 for ``x`` in [0, 2 pi].

    MLX's own float64 ``cos`` (0.32, CPU) is only float32-accurate, so it is computed here from
    float64 multiplies and adds: Cody-Waite reduction ``x = q pi/2 + t`` with ``|t| <= pi/4``, then
    a Taylor polynomial for cos or sin by quadrant. Same argument as the NumPy reference
    (``fl(2 pi u2)``), so results agree with it to float64 rounding.
    """
    q = mx.round(x * (2.0 / math.pi))
    t = ((x - q * _PIO2_1) - q * _PIO2_2) - q * _PIO2_3
    t2 = t * t
    c = _horner(t2, _COS)
    s = _horner(t2, _SIN) * t
    quadrant = q.astype(mx.int32) % 4
    return mx.where(quadrant == 0, c, mx.where(quadrant == 1, -s, mx.where(quadrant == 2, -c, s)))


def gaussian(key: int, start: int, count: int, dtype=mx.float32) -> mx.array:
    """Elements ``start .. start+count-1`` of the standard normal vector (float64 maths, CPU).

    ``log`` and ``sqrt`` are MLX's (correctly rounded in float64 on the CPU); the cosine is
    :func:`_cos`. Results agree with NumPy within one float32 ulp.
    """
    with mx.stream(mx.cpu):
        w = words(key, 2 * start, 2 * count).astype(mx.float64).reshape(count, 2)
        u1 = (w[:, 0] + 1.0) / 4294967296.0
        u2 = w[:, 1] / 4294967296.0
        z = mx.sqrt(-2.0 * mx.log(u1)) * _cos((2.0 * math.pi) * u2)
        return z.astype(dtype)


def generate(key: int, start: int, count: int, distribution: str = RADEMACHER, dtype=mx.float32) -> mx.array:
    if distribution == RADEMACHER:
        return rademacher(key, start, count, dtype)
    if distribution == GAUSSIAN:
        return gaussian(key, start, count, dtype)
    raise ValueError(f"unknown perturbation distribution {distribution!r}")


_SIGN_BIT = 0x80000000


def _rademacher_rows(rows: mx.array, counters: mx.array, k0: mx.array, k1: mx.array, scale_bits: mx.array) -> mx.array:
    """``rows + scale * z`` for float32 ``rows`` [R, 32] whose row r is word ``counters[r]``.

    ``scale * z`` is ``±scale``, exact, so it is built in the bits: bit k of the word is moved to
    the sign position and xor-ed into ``scale``'s bits (``scale_bits``: [1] uint32). The single
    rounding of the add then gives the same bits as the reference's ``w + float32(scale) * z``.
    Four memory passes (shift, and, xor, add); ``mx.compile`` fusion was slower on the CPU.
    """
    w = _hash(counters, k0, k1)
    sign = (w[:, None] << _left_shifts()) & _u32(_SIGN_BIT)
    return rows + mx.view(sign ^ scale_bits, rows.dtype)


_LEFT_SHIFTS = None


def _left_shifts() -> mx.array:
    """[1, 32]: ``31 - k``, moving bit k to the sign bit."""
    global _LEFT_SHIFTS
    if _LEFT_SHIFTS is None:
        _LEFT_SHIFTS = mx.array([[31 - k for k in range(BITS_PER_WORD)]], dtype=mx.uint32)
    return _LEFT_SHIFTS


def _add_chunk(piece: mx.array, start: int, key: int, scale: float, distribution: str) -> mx.array:
    count = piece.size
    if distribution == RADEMACHER and piece.dtype == mx.float32 and start % BITS_PER_WORD == 0:
        body = count - count % BITS_PER_WORD
        if body:
            k0, k1 = split_key(key)
            rows = piece[:body].reshape(-1, BITS_PER_WORD)
            counters = _counters(start // BITS_PER_WORD, rows.shape[0])
            scale_bits = mx.view(mx.array([scale], dtype=mx.float32), mx.uint32)
            out = _rademacher_rows(rows, counters, _u32(k0), _u32(k1), scale_bits).reshape(-1)
            if body == count:
                return out
            tail = _add_chunk(piece[body:], start + body, key, scale, distribution)
            return mx.concatenate([out, tail])
    z = generate(key, start, count, distribution, piece.dtype)
    return piece + mx.array(scale, dtype=piece.dtype) * z


def add_scaled(array: mx.array, key: int, scale: float, distribution: str = RADEMACHER) -> mx.array:
    """A new array ``array + scale * z(key)`` (same shape and dtype), generated chunk by chunk.

    The arithmetic is in the array's dtype with ``scale`` rounded to it first, as the torch
    executor does, so Rademacher results are bit-identical across backends. Above ``CHUNK``
    elements each chunk is computed and written into the output (``slice_update``, which MLX does
    in place once the output buffer is its own) before the next chunk is generated: peak memory is
    the input, the output and one chunk, never a full-size generated vector.
    """
    flat = array.reshape(-1)
    n = flat.size
    if n <= CHUNK:
        return _add_chunk(flat, 0, key, scale, distribution).reshape(array.shape)
    out = flat
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        piece = _add_chunk(flat[start:stop], start, key, scale, distribution)
        out = mx.slice_update(out, piece, mx.array([start]), axes=(0,))
        mx.eval(out)
    return out.reshape(array.shape)
