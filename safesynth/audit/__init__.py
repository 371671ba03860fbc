"""Privacy audit: a DP membership-inference audit of the synthetic data and the gates that block a release."""

from safesynth.audit.attacks import AttackResult, dcr_attack, dcr_scores, featurize
from safesynth.audit.gates import GateDecision, evaluate_gates
from safesynth.audit.membership import AuditDiagnostics, NoisyAudit, audit_membership

__all__ = [
    "AttackResult",
    "AuditDiagnostics",
    "GateDecision",
    "NoisyAudit",
    "audit_membership",
    "dcr_attack",
    "dcr_scores",
    "evaluate_gates",
    "featurize",
]
