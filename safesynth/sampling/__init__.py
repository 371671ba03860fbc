"""Distributed sampling on Dask: the shard plan, the cluster, the fan-out, and the parts it writes.

Sampling is post-processing of the fitted generator: it reads no private data, draws no privacy noise and
spends no budget. See :mod:`safesynth.sampling.fanout` for the failure model.
"""

from safesynth.sampling.fanout import Progress, Scratch, sample_on_cluster, scratch_for
from safesynth.sampling.parts import Part, SampledRows
from safesynth.sampling.shards import Shard, shard_plan

__all__ = ["Part", "Progress", "SampledRows", "Scratch", "Shard", "sample_on_cluster", "scratch_for", "shard_plan"]
