"""`CalibrationConfig`: the static (hashable, jit-static) description of a calibration.

The class defaults are the `recal` preset of spec section 6; `CalibrationConfig.preset`
builds every named preset. Every field is validated on construction, so a bad value
raises ValueError here, never deep inside a trace.
"""

from __future__ import annotations

import dataclasses
import math

# The reward components (spec section 3): the one registry of their names and order. Every
# reward array's last axis, every weight tuple and every per-component metric follow it.
# The first NUM_STATELESS are computed per rollout by the environment (routing.rewards); the
# rest are stateful and computed by calibrate. AUX_COMPONENTS are gated on format and answer.
COMPONENTS = ("format", "answer", "info", "route", "balance")
NUM_COMPONENTS = len(COMPONENTS)
FORMAT, ANSWER, INFO, ROUTE, BALANCE = range(NUM_COMPONENTS)  # each component's index in COMPONENTS
STATELESS_COMPONENTS = COMPONENTS[:ROUTE]
NUM_STATELESS = len(STATELESS_COMPONENTS)
AUX_COMPONENTS = COMPONENTS[INFO:]
DEFAULT_WEIGHTS = (0.5, 1.0, 0.25, 0.25, 0.1)  # w_k in COMPONENTS order

_CHOICES = {
    "baseline": ("mean", "loo"),
    "scale": ("group", "dataset", "batch", "none"),
    "dataset_stats": ("batch", "ema"),
    "reweight": ("none", "variance"),
    "scalar_reward": ("weighted", "router_r1"),
    "route_rule": ("linear", "router_r1"),
    "gate_mode": ("threshold", "group_best"),
}
_BOOLS = ("gate", "decompose", "final_batch_norm")


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """Static calibration settings (spec sections 3-6).

    num_datasets: D, static; dataset ids must lie in [0, D).
    gate / tau: stage-1 gating (aux components need format_ok and answer >= tau).
    gate_mode: 'threshold' (spec: answer >= tau) | 'group_best' (extension, not in the spec:
        answer >= clip(best answer of the group, tau_min, tau), so that on fractional
        metrics the best rollouts of a group open the gate; identical on binary answers).
    decompose: per-component advantages A = sum_k w_k A_k, else one pass on S = sum_k w_k r~k.
    baseline: 'mean' | 'loo'.  scale: 'group' | 'dataset' | 'batch' | 'none'.
    dataset_stats: 'batch' | 'ema' (second moment EMA with weight `ema_decay` on the past).
    final_batch_norm: GDPO's (x - mean) / (std + eps) of the summed advantage over the batch.
    reweight: 'none' | 'variance' (spec 5(c), with w_min, w_max, kappa).
    weights: w_k in COMPONENTS order.
    scalar_reward: 'weighted' (sum_k w_k r~k) | 'router_r1' (Router-R1's scalar, alpha).
    route_rule: 'linear' (needs cost_ref when calibrate recomputes it) | 'router_r1'
        (windowed percentile rule, window of `route_window` rollouts, quantiles route_q_*).
    freq_decay: lam, the weight of the NEW batch in the EMA routing frequency.
    """

    num_datasets: int = 1
    gate: bool = True
    tau: float = 1.0
    gate_mode: str = "threshold"
    tau_min: float = 0.5
    decompose: bool = True
    baseline: str = "mean"
    scale: str = "dataset"
    dataset_stats: str = "batch"
    ema_decay: float = 0.9
    final_batch_norm: bool = False
    reweight: str = "variance"
    w_min: float = 0.5
    w_max: float = 2.0
    kappa: float = 2.0
    eps: float = 1e-6
    min_count: int = 8
    weights: tuple = DEFAULT_WEIGHTS
    scalar_reward: str = "weighted"
    router_r1_alpha: float = 0.0
    route_rule: str = "linear"
    cost_ref: float | None = None
    freq_decay: float = 0.1
    route_window: int = 1000
    route_q_low: float = 0.05
    route_q_high: float = 0.95

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"CalibrationConfig.{name} must be one of {allowed}, got {value!r}")
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"CalibrationConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("num_datasets", "min_count", "route_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CalibrationConfig.{name} must be an int >= 1, got {value!r}")
        floats = ("tau", "tau_min", "ema_decay", "w_min", "w_max", "kappa", "eps", "router_r1_alpha",
                  "freq_decay", "route_q_low", "route_q_high")
        for name in floats:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"CalibrationConfig.{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        try:
            weights = tuple(float(w) for w in self.weights)
        except TypeError as err:
            raise ValueError(f"CalibrationConfig.weights must be a sequence of {NUM_COMPONENTS} numbers, "
                             f"got {self.weights!r}") from err
        if len(weights) != NUM_COMPONENTS or not all(math.isfinite(w) for w in weights):
            raise ValueError(f"CalibrationConfig.weights must be {NUM_COMPONENTS} finite numbers {COMPONENTS}, "
                             f"got {self.weights!r}")
        object.__setattr__(self, "weights", weights)
        if self.cost_ref is not None:
            if not isinstance(self.cost_ref, (int, float)) or not (math.isfinite(self.cost_ref) and self.cost_ref > 0):
                raise ValueError(f"CalibrationConfig.cost_ref must be a positive number or None, got {self.cost_ref!r}")
            object.__setattr__(self, "cost_ref", float(self.cost_ref))
        self._check_ranges()

    def _check_ranges(self):
        if self.eps <= 0:
            raise ValueError(f"CalibrationConfig.eps must be > 0, got {self.eps}")
        if not 0.0 < self.w_min <= self.w_max:
            raise ValueError(f"CalibrationConfig needs 0 < w_min <= w_max, got w_min={self.w_min}, w_max={self.w_max}")
        if self.kappa < 0:
            raise ValueError(f"CalibrationConfig.kappa must be >= 0, got {self.kappa}")
        for name in ("ema_decay", "freq_decay", "router_r1_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"CalibrationConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.route_q_low < self.route_q_high <= 1.0:
            raise ValueError(
                f"CalibrationConfig needs 0 <= route_q_low < route_q_high <= 1, got {self.route_q_low}, {self.route_q_high}")
        if self.gate_mode == "group_best" and not 0.0 < self.tau_min <= self.tau:
            raise ValueError(f"CalibrationConfig: gate_mode='group_best' needs 0 < tau_min <= tau, "
                             f"got tau_min={self.tau_min}, tau={self.tau}")
        if self.scalar_reward == "router_r1" and self.decompose:
            raise ValueError("CalibrationConfig: scalar_reward='router_r1' is a scalar reward; it needs decompose=False")

    @property
    def num_stats(self) -> int:
        """Columns of the dataset second-moment state: one per component plus the scalar."""
        return NUM_COMPONENTS + 1

    @classmethod
    def preset(cls, name: str, num_datasets: int = 1, **overrides) -> "CalibrationConfig":
        """A named preset (spec section 6, or one of EXTENSION_PRESETS), with optional field overrides."""
        if name not in ALL_PRESETS:
            raise ValueError(f"unknown calibration preset {name!r}; known: {sorted(ALL_PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown CalibrationConfig override(s) {unknown}; fields: {sorted(fields)}")
        if "num_datasets" in overrides:
            raise ValueError("pass num_datasets as preset(name, num_datasets=D), not as an override")
        return cls(num_datasets=num_datasets, **{**ALL_PRESETS[name], **overrides})


_SCALAR_GRPO = dict(gate=False, decompose=False, baseline="mean", scale="group", reweight="none")

PRESETS: dict[str, dict] = {
    "grpo": dict(_SCALAR_GRPO),
    "dr_grpo": {**_SCALAR_GRPO, "scale": "none"},
    "router_r1": {**_SCALAR_GRPO, "scalar_reward": "router_r1", "route_rule": "router_r1"},
    "gdpo": dict(gate=False, decompose=True, baseline="mean", scale="group", final_batch_norm=True,
                 reweight="none"),
    "recal": {},
    "recal_no_decomp": dict(decompose=False),
    "recal_no_dataset_norm": dict(scale="batch"),
    "recal_no_reweight": dict(reweight="none"),
    "recal_no_gate": dict(gate=False),
}
PRESET_NAMES = tuple(PRESETS)

# Beyond the spec's public presets: variants of recal this project found worth a name.
# recal_group_gate: the gate opens for a group's best answers on metrics that never reach tau
#   (dcrouter's commongen scores are 98% fractional and never 1.0, so the spec gate keeps its
#   route/info/balance rewards shut for good).
# recal_ema: dataset scales from the EMA statistics (spec 5(b)), for batches where most
#   datasets have too few rollouts for a per-batch scale.
EXTENSION_PRESETS: dict[str, dict] = {
    "recal_group_gate": dict(gate_mode="group_best"),
    "recal_ema": dict(dataset_stats="ema"),
}
EXTENSION_PRESET_NAMES = tuple(EXTENSION_PRESETS)
ALL_PRESETS: dict[str, dict] = {**PRESETS, **EXTENSION_PRESETS}
ALL_PRESET_NAMES = tuple(ALL_PRESETS)
