"""Defaults shared by every config; each experiment config starts from `get_config()` here.

The defaults and their meaning live in the typed sections of recal_jax.training.run_config
(one place): this file turns them into the ml_collections ConfigDict that flags override.
"""

import pathlib

import ml_collections
from ml_collections import config_dict

from recal_jax.calibration import CalibrationConfig
from recal_jax.training.run_config import CALIBRATION_FIELDS, default_dict

# ../shared/data beside the checkout: the default place of the real routing logs.
SHARED_DATA = (pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def get_config() -> ml_collections.ConfigDict:
    values = default_dict()
    values["calibration"] = calibration_section(values["calibration"])
    return ml_collections.ConfigDict(values)


def calibration_section(values: dict) -> ml_collections.ConfigDict:
    """`calibration.preset` plus one typed field per CalibrationConfig field (None = the
    preset's value), so that `--config.calibration.tau=0.5` or
    `--config.calibration.weights='(0.5,1,0.25,0.25,0.1)'` override the preset directly."""
    defaults = {f.name: f.default for f in CalibrationConfig.__dataclass_fields__.values()}
    fields = {"preset": values["preset"]}
    for name in CALIBRATION_FIELDS:
        fields[name] = values[name] if name in values else config_dict.placeholder(type(defaults[name]))
    return ml_collections.ConfigDict(fields)
