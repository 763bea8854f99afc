"""Configuration of the Qwen2-family decoder: presets and HF config.json conversion."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


# Rematerialisation policies of the layer scan: name -> jax.checkpoint policy
# ("none" = no rematerialisation). "full" saves only each layer's input; "save_dots" also
# keeps the weight matmuls (projections, MLP; not the batched attention products);
# "save_attn" keeps each layer's attention output (checkpoint_name "attn_out").
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attn": jax.checkpoint_policies.save_only_these_names("attn_out"),
}
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def _remat_name(value: Any) -> str:
    """Policy name of `value`; a bool is the old flag (True = "full", False = "none")."""
    if isinstance(value, bool):
        return "full" if value else "none"
    if not isinstance(value, str) or value not in REMAT_POLICIES:
        raise ValueError(f"ModelConfig.remat {value!r} is not one of {sorted(REMAT_POLICIES)} "
                         "(or a bool: True = 'full')")
    return value


def _dtype_name(dtype: Any) -> str:
    name = jnp.dtype(dtype).name
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Qwen2/Qwen2.5 decoder.

    `param_dtype` is the storage dtype of the weights, `dtype` the compute dtype of
    the matmuls; softmax, norms and RoPE always run in float32, logits come out float32.
    remat: name of the per-layer rematerialisation policy (REMAT_POLICIES; a bool is
    accepted: True = "full", False = "none"). scan_layers: run the stacked layers with
    lax.scan (compile time independent of depth) rather than an unrolled Python loop
    (same parameters either way). attention_impl: jax.nn.dot_product_attention backend,
    "auto" = "cudnn" on GPU with a 16-bit compute dtype, else "xla".
    attention_query_chunk: with "xla", the full forward attends in blocks of this many
    queries (scores of one block at a time); 0 = all queries at once.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    qkv_bias: bool = True
    param_dtype: Any = jnp.float32
    dtype: Any = jnp.float32
    remat: str = "none"
    scan_layers: bool = True
    attention_impl: str = "auto"
    attention_query_chunk: int = 512

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_heads="
                    f"{self.num_heads}; pass head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) \
                or self.head_dim <= 0:
            raise ValueError(f"ModelConfig.head_dim must be a positive int, got {self.head_dim!r}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not divisible by num_kv_heads="
                f"{self.num_kv_heads}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        object.__setattr__(self, "remat", _remat_name(self.remat))
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"ModelConfig.scan_layers must be a bool, got {self.scan_layers!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"ModelConfig.attention_impl {self.attention_impl!r} is not one "
                             f"of {ATTENTION_IMPLS}")
        if isinstance(self.attention_query_chunk, bool) \
                or not isinstance(self.attention_query_chunk, int) or self.attention_query_chunk < 0:
            raise ValueError(f"ModelConfig.attention_query_chunk must be an int >= 0, got "
                             f"{self.attention_query_chunk!r}")
        # Normalise dtypes to jnp scalar types (accepts strings such as "bfloat16").
        object.__setattr__(self, "param_dtype", _DTYPES[_dtype_name(self.param_dtype)])
        object.__setattr__(self, "dtype", _DTYPES[_dtype_name(self.dtype)])

    @property
    def remat_policy(self):
        """The jax.checkpoint policy of `remat` (None for "none": no rematerialisation)."""
        return REMAT_POLICIES[self.remat]

    def resolved_attention_impl(self) -> str:
        """"xla" or "cudnn": `attention_impl` with "auto" resolved for the default backend."""
        if self.attention_impl != "auto":
            return self.attention_impl
        half = jnp.dtype(self.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        return "cudnn" if half and jax.default_backend() == "gpu" else "xla"

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (GQA group size)."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **overrides) -> "ModelConfig":
        """A copy with fields changed; a derived head_dim is re-derived."""
        if "head_dim" not in overrides and self.head_dim == self.hidden_size // self.num_heads:
            overrides["head_dim"] = None
        return dataclasses.replace(self, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        """A named configuration (see PRESETS), with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        fields = dict(PRESETS[name])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig fields in overrides: {sorted(unknown)}")
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_hf_config(cls, hf: dict, **overrides) -> "ModelConfig":
        """From a transformers Qwen2 config.json dict (transformers 4 or 5 style)."""
        model_type = hf.get("model_type", "qwen2")
        if model_type != "qwen2":
            raise ValueError(f"expected model_type 'qwen2', got {model_type!r}")
        if hf.get("use_sliding_window", False):
            raise ValueError("use_sliding_window=True is not supported (Qwen2.5 does not use it)")
        layer_types = hf.get("layer_types") or []
        if any(t != "full_attention" for t in layer_types):
            raise ValueError(f"only full-attention layers are supported, got {layer_types}")
        rope_params = hf.get("rope_parameters") or {}
        rope_scaling = hf.get("rope_scaling") or {}
        for params in (rope_params, rope_scaling):
            rope_type = params.get("rope_type", params.get("type", "default"))
            if rope_type not in ("default", None):
                raise ValueError(f"rope type {rope_type!r} is not supported (only default RoPE)")
        if "rope_theta" in rope_params:
            theta = rope_params["rope_theta"]
        elif "rope_theta" in hf:
            theta = hf["rope_theta"]
        else:
            theta = 10000.0
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads")
        missing = [k for k in required if k not in hf]
        if missing:
            raise ValueError(f"HF config lacks required keys: {missing}")
        num_heads = hf["num_attention_heads"]
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim"),
            rope_theta=float(theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict:
        """A transformers-compatible Qwen2 config.json dict (readable by v4 and v5)."""
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "use_cache": True,
            "torch_dtype": _dtype_name(self.param_dtype),
            "dtype": _dtype_name(self.param_dtype),
        }


_QWEN25_COMMON = dict(rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                      max_position_embeddings=32768)

PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=4,
                 num_heads=4, num_kv_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6,
                 tie_word_embeddings=True, max_position_embeddings=2048),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_layers=24, num_heads=14, num_kv_heads=2,
                         tie_word_embeddings=True, **_QWEN25_COMMON),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_layers=28, num_heads=12, num_kv_heads=2,
                         tie_word_embeddings=True, **_QWEN25_COMMON),
    "qwen2.5-3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                       num_layers=36, num_heads=16, num_kv_heads=2,
                       tie_word_embeddings=True, **_QWEN25_COMMON),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_layers=28, num_heads=28, num_kv_heads=4,
                       tie_word_embeddings=False, **_QWEN25_COMMON),
}
