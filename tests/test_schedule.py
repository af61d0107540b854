"""Sparsity schedules: values at begin, middle and end, monotone, pure, and torch.ao's CubicSL as oracle."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.ao.pruning.scheduler.cubic_scheduler import CubicSL

from core.errors import PrunelabError
from core.train.schedule import PolynomialDecay, is_pruning_step, polynomial_decay


def test_values_at_begin_middle_and_end():
    schedule = PolynomialDecay(initial_sparsity=0.1, final_sparsity=0.9, begin_step=100, end_step=300,
                               frequency=1, power=3)
    assert schedule(0) == 0.0 and schedule(99) == 0.0
    assert schedule(100) == pytest.approx(0.1)
    assert schedule(200) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5 ** 3)  # 0.8
    assert schedule(300) == pytest.approx(0.9)
    assert schedule(10_000) == pytest.approx(0.9)


def test_power_one_is_linear():
    assert polynomial_decay(50, 0.0, 0.8, 0, 100, power=1) == pytest.approx(0.4)


def test_staircase_holds_between_pruning_steps_and_reaches_final_at_an_unaligned_end():
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=25, frequency=10, power=3)
    assert schedule(10) == schedule(11) == schedule(19)
    assert schedule(19) < schedule(20) < schedule(25) == pytest.approx(0.8)
    assert [step for step in range(40) if schedule.prunes_at(step)] == [0, 10, 20, 25]


def test_agrees_with_torch_ao_cubic_schedule_at_pruning_steps():
    schedule = PolynomialDecay(0.05, 0.95, begin_step=7, end_step=7 + 12 * 5, frequency=5, power=3)
    for step in range(7, 7 + 12 * 5 + 1, 5):
        expected = CubicSL.sparsity_compute_fn(0.05, 0.95, step, 7, 5, 12, initially_zero=True)
        assert schedule(step) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(initial=st.floats(0, 0.5), extra=st.floats(0, 0.49), begin=st.integers(0, 50),
       length=st.integers(1, 200), frequency=st.integers(1, 30), power=st.floats(0.5, 5))
def test_monotone_bounded_and_pure(initial, extra, begin, length, frequency, power):
    final = initial + extra
    arguments = (initial, final, begin, begin + length, frequency, power)
    values = [polynomial_decay(step, *arguments) for step in range(begin + length + 5)]
    assert all(later >= earlier for earlier, later in zip(values, values[1:]))
    assert all(0.0 <= value <= final + 1e-12 for value in values)
    assert values == [polynomial_decay(step, *arguments) for step in range(begin + length + 5)]


def test_pruning_steps():
    assert not is_pruning_step(3, 4, 10, 2) and is_pruning_step(4, 4, 10, 2) and not is_pruning_step(5, 4, 10, 2)


@pytest.mark.parametrize("arguments, word", [
    ((0.0, 1.0, 0, 10), "final sparsity"),
    ((0.6, 0.5, 0, 10), "above the final"),
    ((0.0, 0.5, 10, 10), "end step"),
    ((0.0, 0.5, 0, 10, 0), "frequency"),
    ((0.0, 0.5, 0, 10, 1, -1.0), "power"),
])
def test_bad_schedules_are_refused_with_the_value(arguments, word):
    with pytest.raises(PrunelabError, match=word):
        PolynomialDecay(*arguments)
