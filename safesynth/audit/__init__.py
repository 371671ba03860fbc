"""Privacy audit: membership-inference attacks on the synthetic data and the gates that block a release."""

from safesynth.audit.attacks import AttackResult, dcr_attack, featurize
from safesynth.audit.gates import GateDecision, evaluate_gates

__all__ = ["AttackResult", "GateDecision", "dcr_attack", "evaluate_gates", "featurize"]
