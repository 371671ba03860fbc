"""Privacy audit: a DP membership-inference audit of the synthetic data and the gates that block a release.

Canary auditing (:mod:`safesynth.audit.canary`) measures an empirical lower bound on epsilon (restricted
zone).
"""

from safesynth.audit.attacks import AttackResult, dcr_attack, dcr_scores, featurize
from safesynth.audit.canary import CanaryAudit, audit_canaries, empirical_epsilon, make_canaries
from safesynth.audit.gates import GateDecision, evaluate_gates
from safesynth.audit.membership import AuditDiagnostics, NoisyAudit, audit_membership

__all__ = [
    "AttackResult",
    "AuditDiagnostics",
    "CanaryAudit",
    "GateDecision",
    "NoisyAudit",
    "audit_canaries",
    "audit_membership",
    "dcr_attack",
    "dcr_scores",
    "empirical_epsilon",
    "evaluate_gates",
    "featurize",
    "make_canaries",
]
