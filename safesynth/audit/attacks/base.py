"""The membership-attack interface and its registry (one module and one line per attack).

An attack scores *targets* (rows whose membership is in question) from the released synthetic rows and
the attacker's *reference* rows (its share of the holdout: real rows from the same population that the
generator never saw). Higher scores mean "more likely a member". Members are the rows the generator was
fitted on, non-members the rest of the secret holdout (never the reference rows themselves).

A target's score depends on that target, the synthetic rows, the reference rows and the spec alone, never
on the other targets: the DP audit's sensitivity argument (:mod:`safesynth.audit.membership`) needs that.

The registry follows Opacus' ``accountants/registry.py``: ``@register`` on the class, then
:func:`create_attack` by name::

    @register
    @dataclass(frozen=True, slots=True, kw_only=True)
    class MyAttack:
        name: ClassVar[str] = "my-attack"
        def scores(self, *, synthetic, reference, targets, spec): ...
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import pandas as pd

from safesynth.spec import ReleaseSpec

__all__ = ["ATTACKS", "MembershipAttack", "create_attack", "register"]


@runtime_checkable
class MembershipAttack(Protocol):
    """A membership-inference attack on synthetic data."""

    @property
    def name(self) -> str:
        """The registry name (stable: it appears in reports and gates)."""
        ...

    def scores(self, *, synthetic: pd.DataFrame, reference: pd.DataFrame, targets: pd.DataFrame,
               spec: ReleaseSpec) -> np.ndarray:
        """One score per row of ``targets`` (higher: more likely a member), as a float array."""
        ...


A = TypeVar("A", bound=type[MembershipAttack])

#: Registered attacks by name: the class (instantiate it with its defaults, or use :func:`create_attack`).
ATTACKS: dict[str, type[MembershipAttack]] = {}


def register(cls: A) -> A:
    """Class decorator: add ``cls`` to :data:`ATTACKS` under ``cls.name``.

    Raises:
        ValueError: another class is registered under the same name.
    """
    name = str(cls.name)
    if name in ATTACKS and ATTACKS[name] is not cls:
        raise ValueError(f"attack name `{name}` is already registered")
    ATTACKS[name] = cls
    return cls


def create_attack(name: str, **options: Any) -> MembershipAttack:
    """The registered attack ``name`` built with ``options`` (its defaults otherwise).

    Raises:
        KeyError: no attack has that name (the message lists the known names).
    """
    try:
        cls = ATTACKS[name]
    except KeyError:
        raise KeyError(f"attack `{name}` must be one of {sorted(ATTACKS)}") from None
    return cls(**options)
