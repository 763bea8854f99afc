"""A compose run small enough for SFT tests: a 1-layer policy and 6 + 2 questions per dataset."""
from launch.configs import compose as compose_config


def tiny_compose(**sft):
    """The compose config at test size, with the given sft.* fields set."""
    c = compose_config.get_config()
    c.model.num_layers, c.model.hidden_size = 1, 32
    c.tokenizer.vocab_size = 512
    c.compose.n_train_per_dataset, c.compose.n_test_per_dataset = 6, 2
    c.sft.heldout_questions = 10
    for name, value in sft.items():
        c.sft[name] = value
    c.grpo.instances_per_step, c.grpo.group_size = 4, 2
    return c
