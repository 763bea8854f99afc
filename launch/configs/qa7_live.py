"""qa7 with live LLM endpoints: a Qwen2.5 policy (local HF directory) routes the seven QA sets
over an OpenAI-compatible pool. Needs an accelerator and endpoints:

    python -m launch.main --config=launch/configs/qa7_live.py \
        --config.model.pretrained_path=/path/to/Qwen2.5-3B-Instruct \
        --config.pool.endpoints=/path/to/endpoints.json

endpoints.json: {"model-name": {"base_url": ..., "model": ..., "price_in": ..., "price_out": ...,
"api_key_env": "ENV_VAR_NAME"}, ...}. Without endpoints, a simulated pool answers (for dry runs).
"""

from launch.configs import base


def get_config():
    c = base.get_config()
    c.suite = "qa7"
    c.data_dir = str(base.SHARED_DATA / "qa7")
    c.model.preset = "qwen2.5-3b"
    c.model.dtype = "bfloat16"
    # Scale defaults (the policy's ModelConfig.remat / .attention_impl):
    # layers scanned (the default), attention through dot_product_attention ("auto" = cuDNN
    # flash attention on GPU) and full per-layer rematerialisation, the smallest footprint for
    # the 3B step (256 rollouts x 1024 tokens, 8 micro-batches); measure a variant with
    # experiments/bench_scale.py --preset=qwen2.5-3b --batch=256 --microbatches=8 --remat=...
    c.model.remat = "full"
    c.model.attention_impl = "auto"
    c.prompt_style = "full"
    c.reward.answer_metric = "em"
    c.sft.query_style = "question"
    c.sft.steps = 0  # an instruction-tuned policy follows the protocol from the prompt
    c.grpo.instances_per_step = 32
    c.grpo.group_size = 8
    c.grpo.learning_rate = 1e-6
    c.grpo.max_turns = 4
    c.grpo.max_new_tokens_per_turn = 256
    c.grpo.max_total_tokens = 1024
    c.grpo.max_info_tokens = 256
    c.grpo.steps = 200
    c.grpo.microbatches = 8
    c.eval.batch_size = 256
    return c
