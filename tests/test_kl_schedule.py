"""grpo.kl_schedule: the coefficient per step against closed forms, and its errors."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recal_jax.losses import KL_SCHEDULES, kl_coef_schedule
from recal_jax.training.components import kl_coef_schedule_of
from recal_jax.training.run_config import GrpoSection


def reference(kind, start, end, steps, step):
    frac = min(step, steps) / steps
    if kind == "constant":
        return start
    if kind == "linear":
        return start + (end - start) * frac
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * frac))


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(KL_SCHEDULES), start=st.floats(1e-6, 10.0), end=st.floats(0.0, 10.0),
       steps=st.integers(1, 5000), at=st.floats(0.0, 1.5))
def test_matches_closed_form(kind, start, end, steps, at):
    step = int(at * steps)
    got = float(kl_coef_schedule(kind, start, end, steps)(step))
    want = reference(kind, start, end, steps, step)
    assert math.isfinite(got) and got >= 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_end_points_by_hand():
    f = kl_coef_schedule("linear", 0.1, 0.0, 2000)
    assert [float(f(s)) for s in (0, 1000, 2000, 3000)] == pytest.approx([0.1, 0.05, 0.0, 0.0], abs=1e-7)
    g = kl_coef_schedule("cosine", 0.1, 0.02, 100)
    assert [float(g(s)) for s in (0, 50, 100)] == pytest.approx([0.1, 0.06, 0.02], abs=1e-7)


def test_constant_section_gives_no_schedule_and_a_scheduled_one_follows_its_steps():
    assert kl_coef_schedule_of(GrpoSection(kl_coef=0.1)) is None
    f = kl_coef_schedule_of(GrpoSection(kl_coef=0.1, kl_schedule="linear", kl_coef_final=0.02, steps=10))
    assert float(f(5)) == pytest.approx(0.06)


@pytest.mark.parametrize("args, message", [
    (("step", 0.1, 0.0, 10), "unknown KL schedule 'step'"),
    (("linear", 0.0, 0.1, 10), "must be > 0"),
    (("cosine", 0.1, -1.0, 10), "must be >= 0"),
])
def test_errors_name_the_problem(args, message):
    with pytest.raises(ValueError, match=message):
        kl_coef_schedule(*args)
