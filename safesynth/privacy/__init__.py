"""Privacy core: secure noise, mechanisms with stated costs, the accountant, the planner and the ledger."""

from safesynth.privacy.accountant import (
    ReleaseAccount,
    StageSpend,
    calibrate_noise_multiplier,
    compose_epsilon,
)
from safesynth.privacy.mechanisms import GaussianMechanism, LaplaceMechanism, make_mechanism
from safesynth.privacy.noise import NoiseSource, OpenDPNoise, SeededNoise, default_noise
from safesynth.privacy.planner import BudgetPlan, StageBudget, plan_budget

__all__ = [
    "BudgetPlan",
    "GaussianMechanism",
    "LaplaceMechanism",
    "NoiseSource",
    "OpenDPNoise",
    "ReleaseAccount",
    "SeededNoise",
    "StageBudget",
    "StageSpend",
    "calibrate_noise_multiplier",
    "compose_epsilon",
    "default_noise",
    "make_mechanism",
    "plan_budget",
]
