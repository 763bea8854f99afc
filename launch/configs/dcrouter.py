"""dcrouter: 14 tasks, 9 models, score-only log, one-shot routing (single_call protocol).
Data: ../shared/data/llmrouter by default; override with --config.data_dir.

The recipe is base.score_log_recipe (the own-log default's too): task-random SFT routing with
the task named in <think>, then 2,000 GRPO steps with `recal`, KL 0.1 towards the warm start and
route weight 0.1. README, "Running on real routing data", has its three seeds and the probes it
was chosen from (experiments/results_greedy/dcrouter/NOTES.md).
"""

from launch.configs import base


def get_config():
    c = base.score_log_recipe(base.get_config())
    c.suite = "dcrouter"
    c.data_dir = str(base.SHARED_DATA / "llmrouter")
    c.reward.answer_metric = "score"
    c.tokenizer.vocab_size = 2048
    c.grpo.max_turns = 1
    c.grpo.max_new_tokens_per_turn = 24
    c.grpo.max_total_tokens = 24
    c.eval.batch_size = 100
    return c
