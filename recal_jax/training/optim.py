"""Optimizer: clip_by_global_norm -> adamw, with a linear warmup + cosine decay schedule."""
from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Hyper-parameters of the optax chain built by `make_optimizer`.

    The learning rate rises linearly from 0 to `learning_rate` over `warmup_steps`, then
    follows a cosine to `learning_rate * end_lr_ratio` at `total_steps`.
    """

    learning_rate: float = 1e-6
    warmup_steps: int = 0
    total_steps: int = 1000
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        if not self.learning_rate >= 0:
            raise ValueError(f"OptimConfig.learning_rate must be >= 0; got {self.learning_rate}")
        if self.warmup_steps < 0 or self.total_steps <= 0:
            raise ValueError("OptimConfig needs warmup_steps >= 0 and total_steps > 0; got "
                             f"{self.warmup_steps}, {self.total_steps}")
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"OptimConfig.warmup_steps={self.warmup_steps} exceeds "
                             f"total_steps={self.total_steps}")
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            raise ValueError(f"OptimConfig.end_lr_ratio must be in [0, 1]; got {self.end_lr_ratio}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"OptimConfig.max_grad_norm must be > 0 or None; "
                             f"got {self.max_grad_norm}")


def make_schedule(config: OptimConfig) -> optax.Schedule:
    """Learning rate as a function of the step (linear warmup, then cosine)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if config.warmup_steps else config.learning_rate,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.total_steps, config.warmup_steps + 1),  # optax needs a decay phase
        end_value=config.learning_rate * config.end_lr_ratio,
    )


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
    """optax.chain(clip_by_global_norm, adamw(schedule))."""
    parts = []
    if config.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    parts.append(optax.adamw(make_schedule(config), b1=config.b1, b2=config.b2,
                             eps=config.eps, weight_decay=config.weight_decay))
    return optax.chain(*parts)
