"""Shared helpers of the ledger tests."""

from __future__ import annotations

from safesynth.privacy.accountant import StageSpend
from safesynth.privacy.mechanisms import GaussianMechanism

LIFETIME = {"lifetime_epsilon": 3.0, "lifetime_delta": 1e-5}


def reserve(ledger, release_id, epsilon=1.0, delta=1e-6, dataset="adult", digest="digest", **lifetime):
    return ledger.reserve(dataset=dataset, release_id=release_id, spec_digest=digest, epsilon=epsilon,
                          delta=delta, accountant="rdp", **{**LIFETIME, **lifetime})


def gaussian_spend(stage, epsilon, delta):
    mech = GaussianMechanism.calibrate(sensitivity=1.0, epsilon=epsilon, delta=delta)
    return StageSpend(stage=stage, event=mech.event(), epsilon=epsilon, delta=delta, mechanism="gaussian",
                      secure_noise=True)


def process_context():
    """A multiprocessing context whose children start in milliseconds, with a clean state.

    ``forkserver`` forks each child from a server process that imported the ledger once (a spawned child
    re-imports dp_accounting and SciPy: seconds each), and never forks this test process's threads.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.unit.privacy._ledger_workers"])
    return ctx
