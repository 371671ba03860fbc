"""Attacks on synthetic data: membership inference behind one interface, and anonymeter-style risks.

Membership attacks implement :class:`~safesynth.audit.attacks.base.MembershipAttack` and register
themselves in :data:`ATTACKS` (one module and one ``@register`` line each):

- ``distance-to-closest-record`` (:mod:`.dcr`): the baseline, and the statistic of the DP audit;
- ``domias`` (:mod:`.domias`): synthetic over reference density ratio;
- ``gen-lra`` (:mod:`.genlra`): local likelihood ratio of a surrogate density with and without the target;
- ``classifier`` (:mod:`.classifier`): P(synthetic) from a synthetic-vs-reference classifier.

Risk evaluators in anonymeter's style (a success rate on members against the holdout as control, with a
confidence interval; :mod:`.confidence`): :func:`attribute_inference`, :func:`singling_out`,
:func:`linkability`; and :func:`text_copy` for verbatim copying of texts.

Every figure here is exact, computed on private rows: restricted zone only.
"""

from safesynth.audit.attacks.base import ATTACKS, MembershipAttack, create_attack, register
from safesynth.audit.attacks.classifier import SyntheticVsReference
from safesynth.audit.attacks.confidence import (
    EvaluationResult,
    PrivacyRisk,
    SuccessRate,
    residual_success,
    success_rate,
)
from safesynth.audit.attacks.dcr import DistanceToClosestRecord, dcr_attack, dcr_scores
from safesynth.audit.attacks.domias import DensityRatio
from safesynth.audit.attacks.features import featurize
from safesynth.audit.attacks.figures import (
    AttackResult,
    attack_figures,
    auc_upper_bound,
    hanley_mcneil_variance,
)
from safesynth.audit.attacks.genlra import LocalLikelihoodRatio
from safesynth.audit.attacks.inference import attribute_inference
from safesynth.audit.attacks.linkability import linkability
from safesynth.audit.attacks.singling_out import singling_out
from safesynth.audit.attacks.text_copy import TextCopyResult, text_copy

__all__ = [
    "ATTACKS",
    "AttackResult",
    "DensityRatio",
    "DistanceToClosestRecord",
    "EvaluationResult",
    "LocalLikelihoodRatio",
    "MembershipAttack",
    "PrivacyRisk",
    "SuccessRate",
    "SyntheticVsReference",
    "TextCopyResult",
    "attack_figures",
    "attribute_inference",
    "auc_upper_bound",
    "create_attack",
    "dcr_attack",
    "dcr_scores",
    "featurize",
    "hanley_mcneil_variance",
    "linkability",
    "register",
    "residual_success",
    "singling_out",
    "success_rate",
    "text_copy",
]
