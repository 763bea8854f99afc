"""Qwen2-family decoder (flax.nnx), KV cache, HF checkpoint I/O, sharding rules."""
from recal_jax.models.config import PRESETS, ModelConfig
from recal_jax.models.hf_io import from_pretrained, load_config, save_pretrained
from recal_jax.models.kv_cache import KVCache
from recal_jax.models.qwen2 import Qwen2
from recal_jax.models.sharding import logical_to_mesh_rules, param_shardings, shard_model
from recal_jax.models.tokenizer import Tokenizer, train_bpe

__all__ = [
    "PRESETS", "KVCache", "ModelConfig", "Qwen2", "Tokenizer", "from_pretrained",
    "load_config", "logical_to_mesh_rules", "param_shardings",
    "save_pretrained", "shard_model", "train_bpe",
]
