"""Routing logs: schema, JSONL I/O, loaders of the real suites, the synthetic suite, batching."""

from recal_jax.data.jsonl import (
    log_to_dataset, read_log_dataset, read_log_jsonl, read_pool_json, write_log_jsonl, write_pool_json,
)
from recal_jax.data.loaders import load_dcrouter, load_jsonl_dir, load_nq_pool6, load_qa7
from recal_jax.data.schema import DataError, ModelInfo, RoutingLog, RoutingRecord
from recal_jax.data.suite import Suite, data_dir, random_split, stratified_batches
from recal_jax.data.synthetic import make_synthetic

import recal_jax.data.compose  # noqa: E402,F401  (registers the suite "compose")

__all__ = [
    "DataError", "ModelInfo", "RoutingLog", "RoutingRecord", "Suite", "data_dir", "load_dcrouter",
    "load_jsonl_dir", "load_nq_pool6", "load_qa7", "log_to_dataset", "make_synthetic", "random_split",
    "read_log_dataset", "read_log_jsonl", "read_pool_json", "stratified_batches", "write_log_jsonl",
    "write_pool_json",
]
