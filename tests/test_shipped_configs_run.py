"""Every shipped config runs: parsed, then one SFT step and one GRPO step at tiny sizes, to a
finished run directory (summary.json written last). Configs over logged data run when
../shared/data holds their files and are skipped with the reason otherwise (they are marked
slow to keep CI within its budget: `python -m pytest -m slow tests/test_shipped_configs_run.py`)."""
import importlib
import json
import pathlib

import pytest

from launch.configs import base
from recal_jax.training.pipeline import train_and_evaluate
from recal_jax.training.run_config import parse_config

# the configs over logged data are marked slow (CI runs the embedded ones; `-m slow` runs them)
CONFIGS = ("quickstart", "synthetic", "synthetic_multi_turn", "compose",
           *(pytest.param(name, marks=pytest.mark.slow) for name in ("dcrouter", "nq_pool6", "qa7_live")))
DATA = {"dcrouter": base.SHARED_DATA / "llmrouter" / "dcrouter_train.json",
        "nq_pool6": base.SHARED_DATA / "llmrouter" / "nq_router_pool6.json",
        "qa7_live": base.SHARED_DATA / "qa7" / "dev.parquet"}


def tiny(name: str):
    c = importlib.import_module(f"launch.configs.{name}").get_config()
    if name in DATA:
        if not DATA[name].exists():
            pytest.skip(f"{DATA[name]} is missing: the {name} config reads ../shared/data")
        c.data_dir = str(DATA[name].parent.parent)
    c.model.preset, c.model.pretrained_path, c.model.dtype, c.model.remat = "tiny", "", "float32", "none"
    c.model.num_layers, c.model.hidden_size = 1, 32
    c.tokenizer.vocab_size, c.tokenizer.max_question_tokens = 512, 48
    c.pool.endpoints = ""
    c.prompt_style = "compact"
    c.max_train_instances, c.max_test_instances = 24, 8
    c.sft.steps, c.sft.batch_size, c.sft.until_copy_accuracy, c.sft.rename_after_copy = 1, 8, 0.0, 0.0
    g = c.grpo
    g.steps, g.instances_per_step, g.group_size, g.microbatches = 1, 4, 2, 1  # 8 rows: the 8 test devices
    g.max_new_tokens_per_turn, g.max_total_tokens, g.max_info_tokens = 8, 24, 6
    c.eval.batch_size, c.eval.after_sft = 8, False
    for section in ("synthetic", "compose"):
        if section in c and c.suite == section:
            for key in c[section]:
                c[section][key] = 8 if key.startswith("n_train") else 2
    return c


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_runs_one_step(name, tmp_path):
    config = tiny(name)
    cfg = parse_config(config)
    result = train_and_evaluate(cfg, tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert result.finished and summary["grpo_steps"] == 1 and summary["suite"] == cfg.run.suite
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(json.dumps(cfg.to_dict()))
    assert 0.0 <= summary["policy"]["format_valid"] <= 1.0
    if name == "compose":  # its own references and the multi-turn reading
        assert summary["multi_hop_datasets"] and "decomposer_best_per_hop" in summary["references"]
        assert set(summary["multi_turn"]) == {"multi_hop", "one_hop"}
    assert pathlib.Path(summary["eval_rollouts"]).is_dir()
