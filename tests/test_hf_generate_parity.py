"""Greedy generation parity with transformers' `generate` on a tiny random Qwen2."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is needed for the transformers reference")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from recal_jax.models import from_pretrained  # noqa: E402
from recal_jax.rollout.sampler import Sampler  # noqa: E402

NEW = 32
VOCAB = 211


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, tie_word_embeddings=False, eos_token_id=None, bos_token_id=None,
        pad_token_id=None,
    )
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # default init is tiny; widen it so greedy paths are non-trivial
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    path = tmp_path_factory.mktemp("qwen2_tiny")
    model.save_pretrained(path)
    return path, model


def test_greedy_32_tokens_match_transformers(hf_dir):
    path, hf_model = hf_dir
    rng = np.random.default_rng(0)
    lens = [9, 4, 13]
    width = max(lens)
    tokens = np.zeros((len(lens), width), np.int64)
    mask = np.zeros((len(lens), width), np.int64)
    for i, n in enumerate(lens):
        tokens[i, width - n:] = rng.integers(1, VOCAB, size=n)
        mask[i, width - n:] = 1

    with torch.no_grad():
        hf_out = hf_model.generate(
            input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
            do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW, eos_token_id=None,
            pad_token_id=0,
        )
    expected = hf_out[:, width:].numpy()
    assert expected.shape == (len(lens), NEW)
    assert all(len(set(r.tolist())) > 3 for r in expected)  # a non-degenerate reference

    model, config = from_pretrained(str(path))
    assert config.vocab_size == VOCAB
    sampler = Sampler(model, pad_id=0, eos_id=None)
    out = sampler.sample(tokens.astype(np.int32), mask.astype(bool), jax.random.key(0),
                         max_new_tokens=NEW, greedy=True)
    np.testing.assert_array_equal(np.asarray(out.tokens_bn), expected)
    np.testing.assert_array_equal(np.asarray(out.lengths_b), [NEW] * len(lens))
