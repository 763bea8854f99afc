"""Parity with transformers' Qwen2ForCausalLM: loading, saving, key/shape errors."""
import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (CPU build is enough)")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="needs safetensors")

from flax import nnx  # noqa: E402

from recal_jax.models import from_pretrained, save_pretrained  # noqa: E402
from recal_jax.models.sharding import make_mesh  # noqa: E402

FORWARD = nnx.jit(lambda m, tokens, mask: m(tokens, mask))


def torch_model(tied: bool, seed: int = 0):
    """A tiny random Qwen2ForCausalLM; every weight (biases, norms too) perturbed."""
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
        rms_norm_eps=1e-6, max_position_embeddings=128)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def batch(seed: int):
    """int tokens [4, 10], mask with left padding (one row also right-padded)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 256, (4, 10), generator=g)
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :9] = 0
    mask[3, 7:] = 0
    return tokens, mask


def torch_logits(model, tokens, mask) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=mask).logits.float().numpy()


def jax_logits(model, tokens, mask) -> np.ndarray:
    return np.asarray(FORWARD(model, jnp.asarray(tokens.numpy(), jnp.int32),
                              jnp.asarray(mask.numpy(), bool)))


def assert_close_on_real_tokens(ours, ref, mask, atol=1e-4):
    m = mask.numpy().astype(bool)
    np.testing.assert_allclose(ours[m], ref[m], atol=atol, rtol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("shard_size", [None, "40KB"])
def test_from_pretrained_matches_transformers(tmp_path, tied, shard_size):
    tm = torch_model(tied)
    kwargs = {} if shard_size is None else {"max_shard_size": shard_size}
    tm.save_pretrained(tmp_path, **kwargs)
    sharded = os.path.exists(tmp_path / "model.safetensors.index.json")
    assert sharded == (shard_size is not None)
    model, config = from_pretrained(str(tmp_path))
    assert config.tie_word_embeddings == tied and config.num_kv_heads == 2
    for seed in range(2):
        tokens, mask = batch(seed)
        assert_close_on_real_tokens(jax_logits(model, tokens, mask),
                                    torch_logits(tm, tokens, mask), mask)


def test_tied_checkpoint_with_stored_lm_head(tmp_path):
    tm = torch_model(tied=True, seed=1)
    tm.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in tm.state_dict().items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"),
                                metadata={"format": "pt"})
    model, _ = from_pretrained(str(tmp_path))
    tokens, mask = batch(3)
    assert_close_on_real_tokens(jax_logits(model, tokens, mask),
                                torch_logits(tm, tokens, mask), mask)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_from_pretrained_onto_mesh(tmp_path):
    tm = torch_model(tied=False, seed=2)
    tm.save_pretrained(tmp_path, max_shard_size="40KB")
    model, _ = from_pretrained(str(tmp_path), mesh=make_mesh(fsdp=4, tensor=2))
    spec = model.layers.mlp.gate_kernel[...].sharding.spec  # [L, D, F]; L never sharded
    assert tuple(spec) == (None, "fsdp", "tensor")
    tokens, mask = batch(4)
    assert_close_on_real_tokens(jax_logits(model, tokens, mask),
                                torch_logits(tm, tokens, mask), mask)


def test_bf16_checkpoint(tmp_path):
    """bf16 tensors (which numpy cannot hold natively) load bit-exactly."""
    tm = torch_model(tied=False, seed=5)
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_(p.bfloat16().float())
    # A copy: .to() would also round the fp32 rotary buffer of the reference.
    copy.deepcopy(tm).to(torch.bfloat16).save_pretrained(tmp_path)
    model, config = from_pretrained(str(tmp_path), dtype=jnp.float32)
    assert config.param_dtype == jnp.float32
    want = tm.model.layers[1].self_attn.k_proj.weight.detach().float().numpy()  # [K*Dh, D]
    got = np.asarray(model.layers.attn.k_kernel[...][1]).reshape(64, -1).T  # layer 1 of the stack
    np.testing.assert_array_equal(got, want)
    tokens, mask = batch(6)
    assert_close_on_real_tokens(jax_logits(model, tokens, mask),
                                torch_logits(tm, tokens, mask), mask)
    model16, _ = from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
    assert model16.embed[...].dtype == jnp.bfloat16
    out = jax_logits(model16, tokens, mask)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_loads_in_transformers(tmp_path, tied):
    tm = torch_model(tied, seed=7)
    tm.save_pretrained(tmp_path / "src")
    model, config = from_pretrained(str(tmp_path / "src"))
    save_pretrained(model, str(tmp_path / "out"))
    hf_config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf_config["model_type"] == "qwen2"
    assert hf_config["architectures"] == ["Qwen2ForCausalLM"]
    back = transformers.Qwen2ForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    for name, tensor in tm.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, rtol=0, atol=0)
    tokens, mask = batch(8)
    assert_close_on_real_tokens(torch_logits(back, tokens, mask), jax_logits(model, tokens, mask),
                                mask)
    again, config_again = from_pretrained(str(tmp_path / "out"))
    assert config_again == config
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_key_and_shape_errors_are_listed_together(tmp_path):
    tm = torch_model(tied=False, seed=9)
    tm.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in tm.state_dict().items()}
    del state["model.layers.1.mlp.up_proj.weight"]
    del state["model.norm.weight"]
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(3)
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(63)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)  # ignored
    safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"),
                                metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        from_pretrained(str(tmp_path))
    msg = str(err.value)
    for needle in ("missing keys (2)", "model.layers.1.mlp.up_proj.weight", "model.norm.weight",
                   "unexpected keys (1)", "model.layers.0.self_attn.extra.weight",
                   "shape mismatches (1)", "model.layers.0.self_attn.q_proj.bias"):
        assert needle in msg, (needle, msg)
    assert "inv_freq" not in msg


def test_missing_files_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="config.json"):
        from_pretrained(str(tmp_path))
    torch_model(tied=True).config.to_json_file(str(tmp_path / "config.json"))
    with pytest.raises(ValueError, match="model.safetensors"):
        from_pretrained(str(tmp_path))
