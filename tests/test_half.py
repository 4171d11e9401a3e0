"""flatprep.half: the float32 -> float16 cast gives numpy's bits, everywhere in the float16 range."""

from __future__ import annotations

import numpy as np
import pytest

from flatprep.half import float32_to_float16


def _cast(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.shape, np.float16)
    assert float32_to_float16(values, out)
    return out


def _assert_numpy_bits(values: np.ndarray) -> None:
    expected = values.astype(np.float16).view(np.uint16)
    got = _cast(values).view(np.uint16)
    bad = np.flatnonzero(got != expected)
    assert bad.size == 0, f"{bad.size} values differ, e.g. {values[bad[:3]]}"


@pytest.mark.parametrize("sign", [0, 0x80000000])
def test_bit_patterns_across_the_float16_range_cast_as_numpy_does(sign):
    """Every 509th float32 up to 65504, and every one around the subnormal/normal boundary."""
    bits = np.concatenate([np.arange(0, 0x477FE001, 509, dtype=np.uint32),
                           np.arange(0x38800000 - 2**20, 0x38800000 + 2**20, dtype=np.uint32)])
    _assert_numpy_bits((bits | np.uint32(sign)).view(np.float32))


def test_ties_round_to_even_and_their_neighbours_to_nearest():
    """The exact midpoint between each pair of finite float16 values, and one float32 step either side."""
    low = np.arange(0, 0x7BFF, dtype=np.uint16)
    a, b = low.view(np.float16).astype(np.float64), (low + 1).view(np.float16).astype(np.float64)
    middle = ((a + b) / 2).astype(np.float32).view(np.uint32)
    values = np.concatenate([middle, middle + 1, middle - 1]).view(np.float32)
    _assert_numpy_bits(values)
    _assert_numpy_bits(-values)


def test_zeros_subnormals_and_the_largest_value(rng):
    values = np.concatenate([rng.standard_normal(100_000) * 1e-5, [0.0, -0.0, 65504.0, -65504.0, 2.0**-24,
                                                                     2.0**-25, 3 * 2.0**-26]]).astype(np.float32)
    _assert_numpy_bits(values)
    two_d = rng.standard_normal((300, 1001)).astype(np.float32)  # 3 pieces of 2**17 values, the last one short
    two_d[:, ::7] *= 1e-5  # subnormal results in every piece
    _assert_numpy_bits(two_d)


@pytest.mark.parametrize("bad", [65504.5, 70000.0, -1e6, np.inf, np.nan])
def test_values_beyond_float16_are_left_to_the_caller(bad):
    values = np.array([1.0, bad, 2.0], np.float32)
    assert not float32_to_float16(values, np.empty(3, np.float16))


def test_to_float16_still_refuses_an_overflow_and_keeps_nan():
    from flatprep.exceptions import RunFileError
    from flatprep.h5 import to_float16

    with pytest.raises(RunFileError, match="run.h5: values up to 70000 do not fit float16"):
        to_float16(np.array([1.0, 70000.0], np.float32), source="run.h5")
    kept = to_float16(np.array([1.5, np.nan], np.float32))
    assert kept[0] == 1.5 and np.isnan(kept[1])


def test_wrong_dtypes_are_refused():
    with pytest.raises(TypeError, match="expected float32 and float16 arrays of one shape"):
        float32_to_float16(np.zeros(3), np.empty(3, np.float16))
