"""recal_jax.shapes: the one bucketing helper."""
import pytest

from recal_jax.shapes import pad_count, round_up


@pytest.mark.parametrize("x,m,want", [(0, 16, 0), (1, 16, 16), (16, 16, 16), (17, 16, 32), (5, 1, 5), (33, 32, 64)])
def test_round_up(x, m, want):
    assert round_up(x, m) == want
    assert pad_count(x, m) == want - x


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple"):
        round_up(3, 0)
    with pytest.raises(ValueError, match="x must be"):
        round_up(-1, 4)
