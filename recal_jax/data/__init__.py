"""Routing logs: schema, JSONL I/O, loaders of the real suites, the synthetic suite, batching."""

from recal_jax.data.jsonl import read_log_jsonl, read_pool_json, write_log_jsonl, write_pool_json
from recal_jax.data.loaders import load_dcrouter, load_nq_pool6, load_qa7
from recal_jax.data.schema import ModelInfo, RoutingLog, RoutingRecord
from recal_jax.data.suite import Suite, data_dir, random_split, stratified_batches
from recal_jax.data.synthetic import make_synthetic

__all__ = [
    "ModelInfo", "RoutingLog", "RoutingRecord", "Suite", "data_dir", "load_dcrouter", "load_nq_pool6",
    "load_qa7", "make_synthetic", "random_split", "read_log_jsonl", "read_pool_json", "stratified_batches",
    "write_log_jsonl", "write_pool_json",
]
