"""Your own routing log: `--config.data_dir=DIR` holds

    DIR/train.jsonl, DIR/test.jsonl   one record per line (recal_jax/data/jsonl.py):
        {"id", "dataset", "question", "golden_answers": [...], "scores": {model: 0..1},
         "responses": {model: reply}?, "costs": {model: USD per call}?}
        (a first-line header {"routing_log": {"protocol", "datasets", "models", "name"}} is
        optional; train.parquet / test.parquet with the same columns are read through `datasets`)
    DIR/pool.json                     {model: {"price_in", "price_out", "description"}}
                                      (USD per 1M tokens; optional when a header has the models)

Every record scores every model of the pool. The protocol is --config.protocol, else the
header's, else single_call when some record has no gold answers (a score-only log: the
routed model's logged score is the answer), else multi_turn (the policy answers itself,
exact match against the gold answers). reward.answer_metric="auto" follows the protocol
(score under single_call, em under multi_turn); set it to f1 for F1 rewards.

The recipe is dcrouter's (base.score_log_recipe): SFT (200 steps) teaches the protocol, names the
record's task in the first <think>, and routes each task to a model drawn at random
(sft.routing=dataset_random), so the warm start says nothing about which model is good; 2,000
GRPO steps with `recal`, a KL coefficient of 0.1 towards that start and route weight 0.1 then
learn the routing from the log's scores and costs. (The base recipe, SFT towards each task's best
model, starts GRPO at a corner: on a score-only log it ended exactly at the best single model;
the quickstart's 300 steps at KL 0.001 moved every dcrouter task to one cheap model.)

    python -m launch.main --config=launch/configs/jsonl.py --config.data_dir=DIR
"""

from launch.configs import base


def get_config():
    c = base.score_log_recipe(base.get_config())
    c.suite = "jsonl"
    c.data_dir = ""  # required: the directory of train.jsonl, test.jsonl, pool.json
    c.protocol = ""  # "" = the log's own (header, else by its gold answers)
    c.reward.answer_metric = "auto"
    return c
