"""SFT until a held-out criterion: held-out questions are never trained on, the answer-copy
accuracy matches a plain full-forward reference, and SFT stops once the criterion holds."""
import jax
import numpy as np
import pytest
from flax import nnx

from recal_jax.models import ModelConfig, Qwen2
from recal_jax.training import sft as sft_module
from recal_jax.training.optim import OptimConfig, make_optimizer
from recal_jax.training.sft import HeldOutCriterion, answer_copy_accuracy, run_sft, split_heldout
from recal_jax.training.sft_data import Demonstration, pack_demonstrations
from recal_jax.training.train_state import TrainState

V = 32
CFG = ModelConfig.preset("tiny", vocab_size=V, hidden_size=32, intermediate_size=64,
                         num_layers=1, num_heads=4, num_kv_heads=2)
OPT = OptimConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10)


def _demo(i, question_id, with_answer=True):
    rng = np.random.default_rng(i)
    ids = tuple(int(x) for x in rng.integers(1, V, 12))
    mask = (0.0,) * 6 + (1.0,) * 6
    return Demonstration(f"r{i}", "m", ids, mask, (8, 12) if with_answer else (0, 0)), f"q{question_id}"


def _demos(n=24, distinct=8):
    pairs = [_demo(i, i % distinct) for i in range(n)]
    return [d for d, _ in pairs], {d.record_id: q for d, q in pairs}


def _state(seed=0):
    return TrainState.create(Qwen2(CFG, rngs=nnx.Rngs(seed)), make_optimizer(OPT), rng=jax.random.key(seed))


def test_split_heldout_never_trains_on_a_held_out_question():
    demos, questions = _demos()
    train, held = split_heldout(demos, questions, num_questions=3, seed=0)
    assert len(train) + len(held) == len(demos)
    held_q = {questions[d.record_id] for d in held}
    assert len(held_q) == 3
    assert not held_q & {questions[d.record_id] for d in train}
    with pytest.raises(ValueError, match="distinct questions"):
        split_heldout(demos, questions, num_questions=8, seed=0)


def test_answer_copy_accuracy_matches_a_full_forward_reference():
    demos, _ = _demos(n=10)
    demos[3] = Demonstration("r3", "m", demos[3].token_ids, demos[3].loss_mask, (0, 0))  # no answer
    state = _state(1)
    arrays = pack_demonstrations(demos, seq_len=16, pad_id=0)
    # make some demonstrations copyable: their answer tokens are the model's own greedy choice
    model = state.model()
    logits = np.asarray(model(arrays["tokens_bt"], arrays["attention_mask_bt"]))
    for i in (0, 2, 5):
        for t in range(8, 12):
            arrays["tokens_bt"][i, t] = int(np.argmax(np.asarray(
                model(arrays["tokens_bt"][i:i + 1], arrays["attention_mask_bt"][i:i + 1]))[0, t - 1]))
    logits = np.asarray(model(arrays["tokens_bt"], arrays["attention_mask_bt"]))
    expected = []
    for i in range(len(demos)):
        span = np.flatnonzero(arrays["answer_mask_bt"][i])
        if span.size:
            expected.append(all(np.argmax(logits[i, t - 1]) == arrays["tokens_bt"][i, t] for t in span))
    assert sum(expected) >= 3
    assert answer_copy_accuracy(state, arrays, batch_size=4) == pytest.approx(np.mean(expected))


def _fake_step(state, batch):
    assert set(batch) == {"tokens_bt", "attention_mask_bt", "loss_mask_bt"}
    return state, {"loss": np.float32(0.0)}


def test_run_sft_stops_when_the_criterion_holds(monkeypatch):
    demos, questions = _demos()
    train, held = split_heldout(demos, questions, num_questions=2, seed=0)
    accuracies = iter([0.2, 0.5, 0.95, 0.99])
    monkeypatch.setattr(sft_module, "answer_copy_accuracy", lambda state, arrays, **_: next(accuracies))
    until = HeldOutCriterion(held, target=0.9, every=5, min_steps=0)
    _, info = run_sft(_state(), _fake_step, train, steps=100, batch_size=4, seq_len=16, pad_id=0,
                      seed=0, progress=False, until=until)
    assert info == {"steps": 15, "heldout_copy_accuracy": 0.95}


def test_run_sft_respects_min_steps_and_the_step_cap(monkeypatch):
    demos, questions = _demos()
    train, held = split_heldout(demos, questions, num_questions=2, seed=0)
    monkeypatch.setattr(sft_module, "answer_copy_accuracy", lambda state, arrays, **_: 1.0)
    _, info = run_sft(_state(), _fake_step, train, steps=100, batch_size=4, seq_len=16, pad_id=0, seed=0,
                      progress=False, until=HeldOutCriterion(held, target=0.9, every=5, min_steps=32))
    assert info["steps"] == 35
    monkeypatch.setattr(sft_module, "answer_copy_accuracy", lambda state, arrays, **_: 0.0)
    _, info = run_sft(_state(), _fake_step, train, steps=12, batch_size=4, seq_len=16, pad_id=0, seed=0,
                      progress=False, until=HeldOutCriterion(held, target=0.9, every=5))
    assert info == {"steps": 12, "heldout_copy_accuracy": 0.0}


def test_criterion_rejects_demonstrations_without_an_answer():
    demo, _ = _demo(0, 0, with_answer=False)
    with pytest.raises(ValueError, match="no answer segment"):
        HeldOutCriterion([demo], target=0.9)
    with pytest.raises(ValueError, match="target"):
        HeldOutCriterion([_demo(0, 0)[0]], target=0.0)


def test_segment_hits_by_hand():
    """A row is a hit when every masked token equals the prediction one position earlier."""
    tokens = np.array([[5, 1, 2, 3], [5, 1, 2, 3], [5, 1, 2, 3]])
    pred = np.array([[1, 2, 9], [1, 7, 9], [1, 2, 3]])  # predicts tokens[:, 1:]
    mask = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
    hits = np.asarray(sft_module.segment_hits(pred, tokens, mask))
    assert hits.tolist() == [True, False, False]  # row 1: token 2 mispredicted; row 2: nothing masked


def test_copy_mask_covers_the_answer_and_every_copied_query():
    ids = tuple(range(1, 21))
    demo = Demonstration("r", "m", ids, (0.0,) * 5 + (1.0,) * 15, (16, 20), ((6, 9), (12, 14)))
    arrays = pack_demonstrations([demo], seq_len=24, pad_id=0)
    want = np.zeros(24, bool)
    want[[6, 7, 8, 12, 13, 16, 17, 18, 19]] = True
    assert arrays["copy_mask_bt"][0].tolist() == want.tolist()
    assert arrays["answer_mask_bt"][0].sum() == 4
    # cut from the left (seq_len 16 keeps the last 16 tokens): every span moves by 4
    cut = pack_demonstrations([demo], seq_len=16, pad_id=0)
    assert np.flatnonzero(cut["copy_mask_bt"][0]).tolist() == [2, 3, 4, 8, 9, 12, 13, 14, 15]


def test_check_all_reads_the_queries_too(monkeypatch):
    """With check='all' a demonstration whose answer is right but whose query is not is a miss."""
    demo = Demonstration("r", "m", tuple(range(1, 13)), (0.0,) * 4 + (1.0,) * 8, (9, 12), ((5, 7),))
    arrays = pack_demonstrations([demo], seq_len=12, pad_id=0)
    tokens = arrays["tokens_bt"]
    pred = tokens[:, 1:].copy()
    pred[0, 4] += 1  # position 5 (inside the query span) is mispredicted
    monkeypatch.setattr(sft_module, "_copy_hits", lambda g, p, t, a, m: sft_module.segment_hits(pred, t, m))
    state = _state(0)
    assert answer_copy_accuracy(state, arrays, check="answer") == 1.0
    assert answer_copy_accuracy(state, arrays, check="all") == 0.0
    with pytest.raises(ValueError, match="check"):
        HeldOutCriterion([demo], target=0.9, check="queries")
