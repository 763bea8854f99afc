"""Greedy evaluation is greedy: identical rollouts under two RNG keys (spec section 10), and
a run's evaluation uses what `eval.greedy` says."""
import jax
import numpy as np
import pytest

from launch.configs import quickstart, synthetic_multi_turn
from recal_jax.rollout.sampler import GREEDY, SamplingOptions
from recal_jax.training.components import eval_sampling, train_sampling
from recal_jax.training.evaluation import evaluate
from recal_jax.training.run_config import parse_config
from recal_jax.training.setup import set_up


def _tiny_config(protocol="single_call"):
    c = (quickstart if protocol == "single_call" else synthetic_multi_turn).get_config()
    c.synthetic.n_train_per_family = 6
    c.synthetic.n_test_per_family = 3
    c.tokenizer.vocab_size = 400
    c.model.num_layers = 1
    c.model.hidden_size = 32
    c.grpo.max_new_tokens_per_turn = 12
    c.grpo.max_total_tokens = 40
    c.grpo.max_info_tokens = 6
    c.eval.batch_size = 21
    return c


@pytest.fixture(scope="module", params=["single_call", "multi_turn"])
def built(request):
    run = set_up(parse_config(_tiny_config(request.param)))
    from flax import nnx

    return run, nnx.state(run.model)


def _rollout_tokens(run, params, sampling, key):
    records = run.suite.test.records[:7]
    rollout, _ = run.test_runner.run(params, records, 1, key, sampling=sampling)
    return rollout.tokens_bt, rollout.completion_texts


def test_greedy_rollouts_do_not_depend_on_the_key(built):
    run, params = built
    a_tokens, a_texts = _rollout_tokens(run, params, GREEDY, jax.random.key(0))
    b_tokens, b_texts = _rollout_tokens(run, params, GREEDY, jax.random.key(12345))
    np.testing.assert_array_equal(a_tokens, b_tokens)
    assert a_texts == b_texts


def test_temperature_one_rollouts_depend_on_the_key(built):
    run, params = built
    hot = SamplingOptions(temperature=1.0)
    a_tokens, _ = _rollout_tokens(run, params, hot, jax.random.key(0))
    b_tokens, _ = _rollout_tokens(run, params, hot, jax.random.key(12345))
    assert a_tokens.shape[0] == b_tokens.shape[0]
    assert not np.array_equal(a_tokens, b_tokens)  # an untrained policy at T=1: near-uniform draws


def test_greedy_evaluation_is_identical_under_two_keys(built):
    run, params = built
    results = [evaluate(run, params, jax.random.key(seed)) for seed in (1, 2)]
    assert results[0] == results[1]
    assert results[0]["greedy"] is True


def test_eval_sampling_follows_the_config():
    c = _tiny_config()
    cfg = parse_config(c)
    assert eval_sampling(cfg.eval, cfg.grpo) == GREEDY
    c.eval.greedy = False
    c.grpo.temperature, c.grpo.top_p = 0.7, 0.9
    cfg = parse_config(c)
    assert eval_sampling(cfg.eval, cfg.grpo) == SamplingOptions(temperature=0.7, top_p=0.9) == train_sampling(cfg.grpo)
    assert not eval_sampling(cfg.eval, cfg.grpo).greedy


@pytest.mark.parametrize("kwargs,match", [(dict(temperature=0.0), "temperature"),
                                          (dict(temperature=float("nan")), "temperature"),
                                          (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")])
def test_sampling_options_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingOptions(**kwargs)


def test_greedy_ignores_temperature():
    assert SamplingOptions(temperature=0.0, greedy=True).greedy
