"""Load and save Qwen2 weights in the Hugging Face layout (config.json + safetensors).

Tensors are read memory-mapped, converted to our layout on the host one variable at a time
(the L per-layer HF tensors of a stacked `layers.*` variable fill its slices) and placed
straight onto their target sharding, so at most one variable is on the host at a time.
Saving fetches one layer's slice at a time.
"""
from __future__ import annotations

import functools
import json
import os
import struct
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from recal_jax.models.config import ModelConfig
from recal_jax.models.qwen2 import Qwen2
from recal_jax.shapes import pad_count

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
    raw += b" " * pad_count(len(raw), 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype, fetch in tensors:
            array = np.ascontiguousarray(fetch(), dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"tensor {name}: shape {array.shape} != declared {shape}")
            f.write(array.tobytes())


# -- name and layout mapping ----------------------------------------------------------------

class _Entry(NamedTuple):
    """One HF tensor: its name and shape, our variable's path, the layer it fills in that
    (stacked) variable or None, and the layout conversions of one (unstacked) tensor."""

    hf_name: str
    hf_shape: tuple[int, ...]
    path: tuple[str, ...]
    layer: int | None
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _layer_entries(cfg: ModelConfig, i: int) -> list[_Entry]:
    """The HF tensors of layer i, each filling slice i of a stacked `layers.*` variable."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    h, k, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pre = f"model.layers.{i}."

    def heads_in(n):  # HF [n*dh, d] <-> ours [d, n, dh]
        return (lambda w: w.T.reshape(d, n, dh)), (lambda w: w.reshape(d, n * dh).T)

    def heads_bias(n):  # HF [n*dh] <-> ours [n, dh]
        return (lambda b: b.reshape(n, dh)), (lambda b: b.reshape(n * dh))

    o_in = (lambda w: w.T.reshape(h, dh, d)), (lambda w: w.reshape(h * dh, d).T)
    transpose = (np.transpose, np.transpose)
    ident = (_ident, _ident)
    rows = []
    for name, n in (("q", h), ("k", k), ("v", k)):
        rows.append((f"self_attn.{name}_proj.weight", (n * dh, d), ("attn", f"{name}_kernel"),
                     heads_in(n)))
        if cfg.qkv_bias:
            rows.append((f"self_attn.{name}_proj.bias", (n * dh,), ("attn", f"{name}_bias"),
                         heads_bias(n)))
    rows += [
        ("self_attn.o_proj.weight", (d, h * dh), ("attn", "o_kernel"), o_in),
        ("mlp.gate_proj.weight", (f, d), ("mlp", "gate_kernel"), transpose),
        ("mlp.up_proj.weight", (f, d), ("mlp", "up_kernel"), transpose),
        ("mlp.down_proj.weight", (d, f), ("mlp", "down_kernel"), transpose),
        ("input_layernorm.weight", (d,), ("input_norm", "weight"), ident),
        ("post_attention_layernorm.weight", (d,), ("post_attn_norm", "weight"), ident),
    ]
    return [_Entry(pre + name, shape, ("layers", *path), i, *fns)
            for name, shape, path, fns in rows]


def _ident(x):
    return x


def _param_map(cfg: ModelConfig) -> list[_Entry]:
    """Every HF tensor of a Qwen2ForCausalLM of `cfg`, in HF order."""
    d, v = cfg.hidden_size, cfg.vocab_size
    entries = [_Entry("model.embed_tokens.weight", (v, d), ("embed",), None, _ident, _ident)]
    for i in range(cfg.num_layers):
        entries += _layer_entries(cfg, i)
    entries.append(_Entry("model.norm.weight", (d,), ("final_norm", "weight"), None,
                          _ident, _ident))
    if not cfg.tie_word_embeddings:
        entries.append(_Entry("lm_head.weight", (v, d), ("lm_head",), None,
                              np.transpose, np.transpose))
    return entries


def _variable(model: nnx.Module, path: tuple) -> nnx.Variable:
    node = model
    for part in path:
        node = getattr(node, part)
    return node


def _by_variable(entries: list[_Entry]) -> dict[tuple, list[_Entry]]:
    """Entries grouped by our variable path (a stacked variable: its L layers in order)."""
    groups: dict[tuple, list[_Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.path, []).append(entry)
    return groups


# -- public API -----------------------------------------------------------------------------

def load_config(path: str, **overrides) -> ModelConfig:
    """ModelConfig from `path/config.json`."""
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(f"{path} has no config.json")
    with open(config_path) as f:
        return ModelConfig.from_hf_config(json.load(f), **overrides)


def from_pretrained(path: str, dtype=jnp.float32, mesh: jax.sharding.Mesh | None = None, *,
                    compute_dtype=None, tensor_parallel: bool | None = None,
                    **overrides) -> tuple[Qwen2, ModelConfig]:
    """Builds a Qwen2 from a local HF directory (config.json + safetensors).

    dtype: parameter dtype (compute dtype too unless `compute_dtype` is given).
    overrides: other ModelConfig fields that config.json does not set (remat,
    scan_layers, attention_impl).
    mesh: if given, each tensor goes straight to its `param_shardings` sharding.
    Raises one ValueError listing every missing, unexpected and mis-shaped tensor.
    """
    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a directory")
    config = load_config(path, param_dtype=dtype,
                         dtype=dtype if compute_dtype is None else compute_dtype, **overrides)
    where = _open_checkpoint(path)
    entries = _param_map(config)

    expected = {e.hf_name for e in entries}
    missing = sorted(expected - set(where))
    ignorable = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(n for n in set(where) - expected
                        if n not in ignorable and not n.endswith(_IGNORED_SUFFIXES))
    mismatched = [f"{e.hf_name}: checkpoint {where[e.hf_name].shape(e.hf_name)} vs expected "
                  f"{e.hf_shape}" for e in entries
                  if e.hf_name in where and where[e.hf_name].shape(e.hf_name) != e.hf_shape]
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
    for our_path, group in _by_variable(entries).items():
        var = _variable(model, our_path)
        host = _host_value(where, group, var.get_value().shape, np.dtype(config.param_dtype))
        if shardings is None:
            value = jnp.asarray(host)
        else:
            sharding = shardings
            for part in our_path:
                sharding = sharding[part]
            value = jax.device_put(host, sharding.get_value())
        var.set_value(value)
        del host
    return model, config


def _host_value(where: dict, group: list[_Entry], shape: tuple[int, ...],
                dtype: np.dtype) -> np.ndarray:
    """One variable of ours on the host: a single tensor, or L layers stacked."""
    if group[0].layer is None:
        (e,) = group
        return np.ascontiguousarray(e.to_ours(where[e.hf_name].get(e.hf_name))).astype(dtype)
    host = np.empty(shape, dtype)
    for e in group:
        host[e.layer] = e.to_ours(where[e.hf_name].get(e.hf_name))
    return host


def _fetch_hf(var: nnx.Variable, entry: _Entry, dtype: np.dtype) -> np.ndarray:
    """The HF tensor of `entry` from our variable: only its layer's slice leaves the device."""
    value = var.get_value()
    if entry.layer is not None:
        value = value[entry.layer]
    return entry.to_hf(np.asarray(jax.device_get(value)).astype(dtype))


def save_pretrained(model: Qwen2, path: str, config: ModelConfig | None = None) -> None:
    """Writes `path/config.json` and `path/model.safetensors` (HF Qwen2ForCausalLM layout).

    Tensors are stored in the parameter dtype, fetched to the host one at a time.
    """
    config = model.config if config is None else config
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    entries = _param_map(config)
    for e in entries:
        try:
            var = _variable(model, e.path)
        except AttributeError as err:
            raise ValueError(f"model has no parameter for {e.hf_name} ({e.path}): {err}") \
                from None
        shape = var.get_value().shape
        if e.layer is not None:
            if len(shape) < 1 or shape[0] != config.num_layers:
                raise ValueError(f"{e.hf_name}: {e.path} has shape {shape}, expected a leading "
                                 f"layer axis of {config.num_layers}")
            shape = shape[1:]
        shape = e.to_hf(np.empty(shape, np.bool_)).shape
        if shape != e.hf_shape:
            raise ValueError(f"{e.hf_name}: model parameter gives shape {shape}, config "
                             f"expects {e.hf_shape}")
    os.makedirs(path, exist_ok=True)
    dtype = np.dtype(config.param_dtype)
    tensors = [(e.hf_name, e.hf_shape, dtype,
                functools.partial(_fetch_hf, _variable(model, e.path), e, dtype))
               for e in entries]
    _write_safetensors(os.path.join(path, "model.safetensors"), tensors)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config.to_hf_config(), f, indent=2)
