from recal_jax.rollout.engine import RolloutBatch, RolloutEngine  # noqa: F401
from recal_jax.rollout.sampler import GREEDY, SampleOutput, Sampler, SamplingOptions, top_p_filter  # noqa: F401
