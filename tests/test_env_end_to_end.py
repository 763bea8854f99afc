"""Synthetic suite + ReplayPool + a scripted policy through the real engine and scorer:
the five reward components (route and balance computed by calibration from the scorer's
facts) equal the ones worked out below from the spec's definitions."""
import jax
import numpy as np

from recal_jax.calibration import balance_reward, route_reward_linear
from recal_jax.data import make_synthetic
from recal_jax.models.tokenizer import protocol_special_tokens, train_bpe
from recal_jax.rollout.engine import RolloutEngine
from recal_jax.routing.pools import ReplayPool
from recal_jax.rollout.runner import Scorer
from tests.test_engine import Scripted


def test_scripted_rollouts_get_the_hand_computed_rewards():
    log = make_synthetic(seed=0, n_train_per_family=6, n_test_per_family=1).train
    # two instances on which some model is right and some model is wrong
    picks = [r for r in log.records if 0 < sum(r.scores.values()) < len(r.scores)][:2]
    right = [next(m for m in log.model_names if r.scores[m] == 1.0) for r in picks]
    wrong = [next(m for m in log.model_names if r.scores[m] == 0.0) for r in picks]
    scripts = {}
    for u, r in enumerate(picks):
        gold = r.golden_answers[0]
        scripts[(u, 0)] = [f"<think>s0 go</think>\n<search>{right[u]} : the question</search>",
                           f"<think>done</think>\n<answer>{gold}</answer>"]
        scripts[(u, 1)] = [f"<think>s1 go</think>\n<search>{wrong[u]} : the question</search>",
                           "<answer>zzz</answer>"]
        # format fails (an empty <think>), but the answer is right and the call is made
        scripts[(u, 2)] = [f"<think>s2 go</think>\n<search>{right[u]} : the question</search>",
                           f"<think></think>\n<answer>{gold}</answer>"]
    corpus = [r.question for r in log.records] + [a for r in log.records for a in r.responses.values()]
    tok = train_bpe(corpus * 2 + ["<think>s0 go</think> done zzz Q0: Q1: the question"] * 5, 600,
                    protocol_special_tokens(log.model_names))

    pool = ReplayPool(log)
    engine = RolloutEngine(Scripted(tok, scripts), tok, pool, protocol="multi_turn",
                           max_turns=2, max_new_tokens_per_turn=64, max_total_tokens=200)
    prompts = [f"Q{u}: {r.question}\n" for u, r in enumerate(picks)]
    rollout = engine.run(picks, prompts, 3, jax.random.key(0))

    m_count = len(log.model_names)
    cost_ref = max(np.mean([log.call_cost(r, m) for r in log.records]) for m in log.model_names)
    scorer = Scorer(log=log, answer_metric="em")
    rewards = scorer.score(rollout, picks)
    route_ug = np.asarray(route_reward_linear(rewards.cost_ug, cost_ref))
    balance_ug = np.asarray(balance_reward(rewards.call_counts_ugm, rewards.valid_ug, np.full(m_count, 1.0 / m_count)))
    rewards_ugk = np.concatenate([rewards.stateless_ugk, route_ug[..., None], balance_ug[..., None]], axis=-1)

    def route(r, m):  # spec section 3, linear rule
        return 1.0 - min(log.call_cost(r, m) / cost_ref, 1.0)

    for u, r in enumerate(picks):
        # components: format, answer (EM), info (sub-EM of the reply = its logged score on this
        # suite), route, balance (uniform frequencies: clip(1 - M * 1/M) = 0)
        expected = np.array([
            [1.0, 1.0, 1.0, route(r, right[u]), 0.0],
            [1.0, 0.0, 0.0, route(r, wrong[u]), 0.0],
            [0.0, 1.0, 1.0, route(r, right[u]), 0.0],
        ], np.float32)
        np.testing.assert_allclose(rewards_ugk[u], expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(rewards.format_ok_ug[u], [True, True, False])
        counts = np.zeros((3, m_count), int)
        for g, m in enumerate([right[u], wrong[u], right[u]]):
            counts[g, log.model_names.index(m)] = 1
        np.testing.assert_array_equal(rewards.call_counts_ugm[u], counts)
    assert rewards.valid_ug.all()
