"""Load and save Qwen2 weights in the Hugging Face layout (config.json + safetensors).

Tensors are read memory-mapped, one at a time, converted to our layout on the host and
placed straight onto their target sharding, so a checkpoint never sits in memory twice.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from recal_jax.models.config import ModelConfig
from recal_jax.models.qwen2 import Qwen2

_ST_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
# Keys some checkpoints carry that hold no parameters of ours.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# -- safetensors files ----------------------------------------------------------------------

class _SafetensorsFile:
    """Header of one .safetensors file and memory-mapped (zero-copy) tensor views."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        self.entries = header
        self.data_start = 8 + header_len

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        if entry["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {entry['dtype']}")
        dtype = _ST_DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{self.path}: tensor {name} byte range does not match its shape")
        if end == begin:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self.data_start + begin,
                         shape=shape)


def _open_checkpoint(path: str) -> dict[str, _SafetensorsFile]:
    """Tensor name -> the file that holds it (single file or sharded index)."""
    index_path = os.path.join(path, "model.safetensors.index.json")
    single_path = os.path.join(path, "model.safetensors")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        files = {fn: _SafetensorsFile(os.path.join(path, fn)) for fn in set(weight_map.values())}
        where = {}
        for name, fn in weight_map.items():
            if name not in files[fn].entries:
                raise ValueError(f"index lists {name} in {fn}, but that file lacks it")
            where[name] = files[fn]
        return where
    if os.path.exists(single_path):
        f = _SafetensorsFile(single_path)
        return {name: f for name in f.entries}
    raise ValueError(f"{path} has neither model.safetensors nor model.safetensors.index.json")


def _write_safetensors(path: str, tensors: list[tuple[str, tuple[int, ...], np.dtype,
                                                     Callable[[], np.ndarray]]]) -> None:
    """Writes tensors given as (name, shape, dtype, fetch) one at a time."""
    header, offset = {}, 0
    for name, shape, dtype, _ in tensors:
        size = int(np.prod(shape)) * dtype.itemsize
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype, fetch in tensors:
            array = np.ascontiguousarray(fetch(), dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"tensor {name}: shape {array.shape} != declared {shape}")
            f.write(array.tobytes())


# -- name and layout mapping ----------------------------------------------------------------

def _param_map(cfg: ModelConfig):
    """[(hf_name, hf_shape, our_path, to_ours(np) -> np, to_hf(np) -> np)]."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    h, k, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def ident(x):
        return x

    def transpose(x):
        return x.T

    def heads_in(n):  # HF [n*dh, d] <-> ours [d, n, dh]
        return (lambda w: w.T.reshape(d, n, dh)), (lambda w: w.reshape(d, n * dh).T)

    def heads_bias(n):  # HF [n*dh] <-> ours [n, dh]
        return (lambda b: b.reshape(n, dh)), (lambda b: b.reshape(n * dh))

    o_in = (lambda w: w.T.reshape(h, dh, d)), (lambda w: w.reshape(h * dh, d).T)

    entries = [("model.embed_tokens.weight", (v, d), ("embed",), ident, ident)]
    for i in range(cfg.num_layers):
        pre, ours = f"model.layers.{i}.", ("layers", i)
        attn = ours + ("attn",)
        for name, n in (("q", h), ("k", k), ("v", k)):
            entries.append((pre + f"self_attn.{name}_proj.weight", (n * dh, d),
                            attn + (f"{name}_kernel",), *heads_in(n)))
            if cfg.qkv_bias:
                entries.append((pre + f"self_attn.{name}_proj.bias", (n * dh,),
                                attn + (f"{name}_bias",), *heads_bias(n)))
        entries.append((pre + "self_attn.o_proj.weight", (d, h * dh), attn + ("o_kernel",),
                        *o_in))
        mlp = ours + ("mlp",)
        entries += [
            (pre + "mlp.gate_proj.weight", (f, d), mlp + ("gate_kernel",), transpose, transpose),
            (pre + "mlp.up_proj.weight", (f, d), mlp + ("up_kernel",), transpose, transpose),
            (pre + "mlp.down_proj.weight", (d, f), mlp + ("down_kernel",), transpose, transpose),
            (pre + "input_layernorm.weight", (d,), ours + ("input_norm", "weight"), ident, ident),
            (pre + "post_attention_layernorm.weight", (d,),
             ours + ("post_attn_norm", "weight"), ident, ident),
        ]
    entries.append(("model.norm.weight", (d,), ("final_norm", "weight"), ident, ident))
    if not cfg.tie_word_embeddings:
        entries.append(("lm_head.weight", (v, d), ("lm_head",), transpose, transpose))
    return entries


def _variable(model: nnx.Module, path: tuple) -> nnx.Variable:
    node = model
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


# -- public API -----------------------------------------------------------------------------

def load_config(path: str, **overrides) -> ModelConfig:
    """ModelConfig from `path/config.json`."""
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(f"{path} has no config.json")
    with open(config_path) as f:
        return ModelConfig.from_hf_config(json.load(f), **overrides)


def from_pretrained(path: str, dtype=jnp.float32, mesh: jax.sharding.Mesh | None = None, *,
                    compute_dtype=None, tensor_parallel: bool | None = None
                    ) -> tuple[Qwen2, ModelConfig]:
    """Builds a Qwen2 from a local HF directory (config.json + safetensors).

    dtype: parameter dtype (compute dtype too unless `compute_dtype` is given).
    mesh: if given, each tensor goes straight to its `param_shardings` sharding.
    Raises one ValueError listing every missing, unexpected and mis-shaped tensor.
    """
    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a directory")
    config = load_config(path, param_dtype=dtype,
                         dtype=dtype if compute_dtype is None else compute_dtype)
    where = _open_checkpoint(path)
    entries = _param_map(config)

    expected = {name for name, *_ in entries}
    missing = sorted(expected - set(where))
    ignorable = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(n for n in set(where) - expected
                        if n not in ignorable and not n.endswith(_IGNORED_SUFFIXES))
    mismatched = [f"{name}: checkpoint {where[name].shape(name)} vs expected {shape}"
                  for name, shape, *_ in entries
                  if name in where and where[name].shape(name) != shape]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
    if problems:
        raise ValueError(f"checkpoint {path} does not fit the config:\n  " + "\n  ".join(problems))

    model = nnx.eval_shape(lambda: Qwen2(config, rngs=nnx.Rngs(0)))
    shardings = None
    if mesh is not None:
        from recal_jax.models.sharding import param_shardings
        shardings = param_shardings(model, mesh, tensor_parallel)
    param_dtype = np.dtype(config.param_dtype)
    for name, _, our_path, to_ours, _ in entries:
        host = np.ascontiguousarray(to_ours(where[name].get(name))).astype(param_dtype)
        if shardings is None:
            value = jnp.asarray(host)
        else:
            sharding = shardings
            for part in our_path:
                sharding = sharding[part]
            value = jax.device_put(host, sharding.get_value())
        _variable(model, our_path).set_value(value)
        del host
    return model, config


def save_pretrained(model: Qwen2, path: str, config: ModelConfig | None = None) -> None:
    """Writes `path/config.json` and `path/model.safetensors` (HF Qwen2ForCausalLM layout).

    Tensors are stored in the parameter dtype, fetched to the host one at a time.
    """
    config = model.config if config is None else config
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    entries = _param_map(config)
    for name, hf_shape, our_path, _, to_hf in entries:
        try:
            var = _variable(model, our_path)
        except (AttributeError, IndexError) as e:
            raise ValueError(f"model has no parameter for {name} ({our_path}): {e}") from None
        shape = to_hf(np.empty(var.get_value().shape, np.bool_)).shape
        if shape != hf_shape:
            raise ValueError(f"{name}: model parameter gives shape {shape}, config expects "
                             f"{hf_shape}")
    os.makedirs(path, exist_ok=True)
    dtype = np.dtype(config.param_dtype)
    tensors = [
        (name, hf_shape, dtype,
         (lambda p=our_path, f=to_hf: f(np.asarray(jax.device_get(_variable(model, p).get_value()))
                                        .astype(dtype))))
        for name, hf_shape, our_path, _, to_hf in entries
    ]
    _write_safetensors(os.path.join(path, "model.safetensors"), tensors)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config.to_hf_config(), f, indent=2)
