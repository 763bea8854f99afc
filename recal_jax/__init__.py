"""ReCal-JAX: reward calibration for RL-trained LLM routers, in JAX/Flax."""

__version__ = "0.1.0"
