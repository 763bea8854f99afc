"""nq_pool6: real replies of Router-R1's six-model pool on NQ (multi-turn, F1 rewards).
Data: ../shared/data/llmrouter by default; override with --config.data_dir."""

from launch.configs import base


def get_config():
    c = base.get_config()
    c.suite = "nq_pool6"
    c.data_dir = str(base.SHARED_DATA / "llmrouter")
    c.reward.answer_metric = "f1"
    c.calibration.tau = 0.5  # F1 rewards: an answer counts as correct from F1 0.5
    c.tokenizer.vocab_size = 2048
    c.grpo.max_info_tokens = 32
    c.grpo.max_new_tokens_per_turn = 48
    c.grpo.max_total_tokens = 192
    c.grpo.steps = 150
    c.eval.batch_size = 100
    return c
