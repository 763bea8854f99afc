"""launch/gpu_check: the FLOPs formula against hand counts, the peak table, and one CPU run."""
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from launch import gpu_check
from recal_jax.models.config import ModelConfig
from recal_jax.models.qwen2 import Qwen2

REPO = pathlib.Path(__file__).resolve().parents[1]


def _small_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=10, hidden_size=8, intermediate_size=12, num_layers=2,
                  num_heads=4, num_kv_heads=2, tie_word_embeddings=True)
    fields.update(overrides)
    return ModelConfig(**fields)


def test_flops_formula_hand_count():
    # D=8, H=4, K=2, Dh=8/4=2, F=12, L=2, V=10. Per layer:
    #   q kernel 8*4*2=64, k and v kernels 8*2*2=32 each, biases 4*2 + 2*2 + 2*2 = 16,
    #   o kernel 4*2*8=64, mlp 3*8*12=288, two norms 2*8=16  -> 512
    # N = 2*512 + final norm 8 + LM head 8*10=80 = 1112.
    config = _small_config()
    assert gpu_check.flops_params(config) == 1112
    # T=16: 6N = 6672; attention 12 * L * H * Dh * T = 12*2*4*2*16 = 3072.
    assert gpu_check.train_flops_per_token(config, 16, reference_forward=False) == 9744
    # The reference forward adds one forward: (6672 + 3072) * 4/3 = 12992.
    assert gpu_check.train_flops_per_token(config, 16, reference_forward=True) == \
        pytest.approx(12992)


@pytest.mark.parametrize("tied", [True, False])
def test_flops_params_matches_real_model(tied):
    # Independent count: every Param of the built model except the input embedding table,
    # plus the D x V output projection when it is the (tied) embedding itself.
    config = ModelConfig.preset("tiny", tie_word_embeddings=tied, num_layers=2)
    model = nnx.eval_shape(lambda: Qwen2(config, rngs=nnx.Rngs(0)))
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    expected = total - int(np.prod(model.embed.shape))
    if tied:
        expected += config.hidden_size * config.vocab_size
    assert gpu_check.flops_params(config) == expected


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12),
    ("TPU v5p", 459e12),
    ("cpu", None),
])
def test_peak_table(kind, peak):
    assert gpu_check.peak_flops_per_device(kind) == peak


def test_bad_check_config_raises():
    with pytest.raises(ValueError, match="samples_per_prompt"):
        gpu_check.CheckConfig(rollout_batch=10, samples_per_prompt=4)
    with pytest.raises(ValueError, match="dtype"):
        gpu_check.CheckConfig(dtype="float16")
    with pytest.raises(ValueError, match="seq_len"):
        gpu_check.CheckConfig(seq_len=1)


def test_synthetic_batch_layout():
    batch = gpu_check.synthetic_grpo_batch(np.random.default_rng(0), 4, 10, 50)
    assert batch["tokens_bt"].shape == (4, 10) and batch["advantages_b"].shape == (4,)
    assert batch["tokens_bt"].min() >= 0 and batch["tokens_bt"].max() < 50
    np.testing.assert_array_equal(batch["loss_mask_bt"][:, :5], 0.0)
    np.testing.assert_array_equal(batch["loss_mask_bt"][:, 5:], 1.0)
    assert np.all(np.isfinite(batch["logp_old_bt"]))


def test_cpu_run_prints_throughput_and_na_mfu():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "launch.gpu_check", "--preset=tiny", "--dtype=float32",
           "--batch=8", "--seq_len=64", "--steps=2", "--rollout_batch=8", "--prompt_len=16",
           "--new_tokens=8", "--num_layers=1", "--hidden_size=64", "--mesh_fsdp=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cpu x 2" in out
    train = re.search(r"^\| train tokens/s +\| ([\d,]+)", out, re.M)
    rollout = re.search(r"^\| rollout tokens/s +\| ([\d,]+) generated", out, re.M)
    assert train and rollout, out
    assert int(train.group(1).replace(",", "")) > 0
    assert int(rollout.group(1).replace(",", "")) > 0
    # 8 rows x 8 new tokens, no EOS: every row generates all of them.
    assert "| rollout timing    | 64 tokens" in out
    mfu = re.search(r"^\| MFU +\| (.*)$", out, re.M)
    assert mfu and mfu.group(1).startswith("n/a"), out
    assert "kl_coef=0" in out
