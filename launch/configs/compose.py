"""The compositional multi-turn world: a router that learns to decompose.

Suite `compose` (recal_jax.data.compose): people, cities, countries and companies; one-hop
questions ("where was X born?") and two-hop ones ("in which country was X born?"); five
simulated models that answer the QUERY they receive (a sub-question built from an earlier
reply is answered on its own merits), with skills per relation and a weaker one-call
composition (recal_jax.data.compose.MODEL_TABLE, fixed before any RL run).

SFT demonstrates the protocol and how each question form decomposes: the first <think> names
the question's form, two-hop questions are asked as two one-hop sub-questions (the second built
from the first reply) and one in four as one direct call, each call to a model drawn at random
per hop template (sft.routing=decompose_random): nothing says which model is good; once the
copy has formed, half the demonstrations show fresh random names (sft.rename_share=0.5,
sft.rename_after_copy=0.5), so no name is learnt by heart. Entity
names are split into their syllables before BPE (tokenizer.split_pattern), so a name is the
same syllable tokens wherever it stands, seen in training or not, and copying a test name out
of the question or out of an <information> block is copying tokens SFT has seen. GRPO with
ReCal (info, route and balance active, gated behind a correct answer) learns which model to ask
per hop and when to decompose.

    python -m launch.main --config=launch/configs/compose.py --config.seed=S
"""

from launch.configs import base
from recal_jax.data.compose_world import NAME_SPLIT_PATTERN


def get_config():
    c = base.get_config()
    c.suite = "compose"
    c.compose.n_train_per_dataset = 300
    c.compose.n_test_per_dataset = 50
    c.reward.answer_metric = "em"
    # every entity name is the same syllable tokens wherever it stands (seen in training or not)
    c.tokenizer.split_pattern = NAME_SPLIT_PATTERN
    c.calibration.preset = "recal"
    # SFT until every copy holds on 40 held-out questions (>= 0.95 under teacher forcing, checked
    # every 100 steps): the answer and each sub-question the policy writes (sft.copy_check=all; the
    # answer alone let seed 1 start GRPO with broken second hops).
    c.sft.copy_check = "all"
    # (sft.fresh_worlds, demonstrations on re-drawn worlds, is off: with syllable tokens the copy
    # did not form within 1,100 steps on seed 0; README, "The compositional world")
    c.sft.steps = 1500
    # a lower peak rate than base's 5e-3: the copy forms at 300-400 steps on seeds 0 and 3 instead
    # of 1200 and 600 (README, "The compositional world")
    c.sft.learning_rate = 1.5e-3
    c.sft.until_copy_accuracy = 0.95
    c.sft.check_every = 100
    c.sft.min_steps = 600
    c.sft.routing = "decompose_random"
    c.sft.query_style = "question"
    c.sft.think = "dataset"
    c.sft.reply_swap = 0.0  # replies come from the sub-question asked: nothing to learn by heart
    c.sft.direct_share = 0.25
    # once the copy has formed on the world's own names (held-out copy >= 0.5), half the
    # demonstrations show fresh random names (consistent across question, queries, replies and
    # answer), so a name cannot be learnt by heart and the copy must generalise. Renaming from the
    # first step let the copy form faster on seeds 1 and 4 but never on seed 3 (README)
    c.sft.rename_share = 0.5
    c.sft.rename_after_copy = 0.5
    c.grpo.steps = 300
    c.grpo.max_turns = 2
    c.grpo.max_new_tokens_per_turn = 40
    c.grpo.max_total_tokens = 112
    c.grpo.max_info_tokens = 8
    return c
