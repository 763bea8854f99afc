"""dcrouter: 14 tasks, 9 models, score-only log, one-shot routing (single_call protocol).
Data: ../shared/data/llmrouter by default; override with --config.data_dir."""

from launch.configs import base


def get_config():
    c = base.get_config()
    c.suite = "dcrouter"
    c.data_dir = str(base.SHARED_DATA / "llmrouter")
    c.reward.answer_metric = "score"
    c.tokenizer.max_question_tokens = 48  # a tiny policy reads the end of long questions
    c.tokenizer.vocab_size = 2048
    c.grpo.max_turns = 1
    c.grpo.max_new_tokens_per_turn = 24
    c.grpo.max_total_tokens = 24
    c.grpo.steps = 150
    c.sft.steps = 200
    c.eval.batch_size = 100
    return c
