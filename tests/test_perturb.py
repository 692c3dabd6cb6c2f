"""The canonical perturbation: golden vectors, and torch equal to the NumPy reference."""

import numpy as np
import pytest
import torch

from edgezo import perturb
from edgezo.backends.torch import perturb as tz
from edgezo.keys import Direction, fnv1a64, splitmix64

NAME = "model.layers.20.input_layernorm.weight"
DIRECTION = Direction(42, 3, 1, 2, 0, 5)


def test_key_mix_golden():
    assert splitmix64(0) == 0xE220A8397B1DCDAF  # the published first SplitMix64 output for seed 0
    assert fnv1a64("model.norm.weight") == 0xD6D6E5AFD11604E4
    assert DIRECTION.tensor_key(NAME) == 0xBC24138B6A612774


def test_keys_differ_by_every_field_and_name():
    base = Direction(1, 2, 3, 1, 4, 5, 0)
    variants = [Direction(*(f + (k == n) for n, f in enumerate(base.fields()))) for k in range(7)]
    keys = {d.tensor_key("w") for d in [base, *variants]} | {base.tensor_key("v")}
    assert len(keys) == 9


def test_numpy_reference_golden():
    key = DIRECTION.tensor_key(NAME)
    assert perturb.words(key, 0, 4).tolist() == [1323769979, 1709909284, 2996906087, 235605442]
    signs = "".join("1" if v < 0 else "0" for v in perturb.rademacher(key, 0, 64))
    assert signs == "1101111000000100111001110111001000100100101001001101011110100110"
    assert perturb.rademacher(key, 1000003, 8).tolist() == [-1, 1, -1, 1, -1, 1, -1, -1]
    np.testing.assert_allclose(
        perturb.gaussian(key, 0, 6),
        [-1.2304906, 0.79847181, 0.10975304, 0.1743252, -2.5607569, -1.1470885],
        rtol=1e-6,
    )


@pytest.mark.parametrize("start,count", [(0, 1), (0, 64), (5, 1000), (31, 33), (12345, 70001), (2**31 + 7, 100)])
def test_torch_rademacher_bit_exact(start, count):
    key = DIRECTION.tensor_key(NAME)
    assert np.array_equal(tz.rademacher(key, start, count).numpy(), perturb.rademacher(key, start, count))


def test_torch_gaussian_within_one_ulp():
    key = Direction(7, 0, 0, 1, 3).tensor_key("w")
    a, b = tz.gaussian(key, 100, 50000).numpy(), perturb.gaussian(key, 100, 50000)
    assert np.all(np.abs(a - b) <= np.spacing(np.abs(b)))


def test_slices_are_independent():
    key = Direction(1, 1, 1, 1, 1).tensor_key("x")
    whole = perturb.rademacher(key, 0, 5000)
    parts = np.concatenate([perturb.rademacher(key, s, min(777, 5000 - s)) for s in range(0, 5000, 777)])
    assert np.array_equal(whole, parts)


def test_rademacher_statistics():
    z = perturb.rademacher(Direction(3, 0, 0, 0, 0).tensor_key("w"), 0, 200_000)
    assert set(np.unique(z)) == {-1.0, 1.0}
    assert abs(z.mean()) < 0.01
    assert abs(np.mean(z[:-1] * z[1:])) < 0.01  # neighbouring elements uncorrelated


@pytest.mark.parametrize("compiled", [False, True])
def test_add_scaled_and_copy_match_reference(compiled, monkeypatch):
    monkeypatch.setattr(tz, "CHUNK", 1 << 12)  # several chunks, and a ragged tail
    tz.use_compiled_kernel(compiled)
    try:
        key = Direction(9, 1, 0, 2, 0, 1).tensor_key("w")
        base = torch.randn(3 * 4096 + 45)
        want = base.numpy() + np.float32(-0.003) * perturb.rademacher(key, 0, base.numel())
        inplace = base.clone()
        tz.add_scaled(inplace, key, -0.003)
        assert np.array_equal(inplace.numpy(), want)
        copy = tz.perturbed_copy(base, key, -0.003)
        assert np.array_equal(copy.numpy(), want)
    finally:
        tz.use_compiled_kernel(False)
