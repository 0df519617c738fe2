import itertools

import pytest

from raysight.train.schedule import lr_at


def test_onecycle_warms_up_peaks_and_decays() -> None:
    total, peak = 101, 1.0
    rates = [lr_at(s, total, peak, "onecycle", 0.2) for s in range(total)]
    top = max(range(total), key=rates.__getitem__)
    assert rates[0] == pytest.approx(peak / 25)
    assert top == 20  # end of the warm-up share
    assert rates[top] == pytest.approx(peak)
    assert all(a <= b for a, b in itertools.pairwise(rates[: top + 1]))
    assert all(a >= b for a, b in itertools.pairwise(rates[top:]))
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_cosine_starts_at_peak() -> None:
    assert lr_at(0, 10, 0.5, "cosine", 0.3) == pytest.approx(0.5)
    assert lr_at(9, 10, 0.5, "cosine", 0.3) == pytest.approx(0.0, abs=1e-12)


def test_constant_and_overrun_steps() -> None:
    assert lr_at(500, 10, 0.1, "constant", 0.0) == 0.1
    # A step past the plan keeps the final rate instead of wrapping around.
    assert lr_at(15, 10, 1.0, "cosine", 0.0) == lr_at(9, 10, 1.0, "cosine", 0.0)
