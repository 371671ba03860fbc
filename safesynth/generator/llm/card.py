"""The model card (README.md) saved next to a trained generator: what was spent, how, and its caveats."""

from __future__ import annotations

from typing import Any

__all__ = ["SECURE_NOISE_NOTE", "model_card"]

SECURE_NOISE_NOTE = (
    "DP-SGD noise is drawn by Opacus with torch.normal from a torch.Generator (Mersenne Twister), and the "
    "Poisson sampling mask from numpy's PCG64; both are seeded from the operating system's entropy "
    "(secrets) in a release, but neither is a cryptographically secure generator, and floating-point "
    "Gaussian sampling is exposed to the attacks of Mironov (2012) / Haney et al. (2022). Opacus' "
    "secure_mode would fix this but needs torchcsprng, which is not installable here. The stated "
    "(epsilon, delta) is therefore a guarantee of the idealised mechanism."
)


def _row(name: str, value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.6g}"
    return f"| {name} | {value} |"


def model_card(*, architecture: dict[str, Any], privacy: dict[str, Any], dataset: str) -> str:
    """Markdown with a YAML header; every number is public (spec constants or DP outputs)."""
    sgd = privacy.get("dp_sgd", {})
    lines = [
        "---",
        "library_name: transformers",
        "tags: [differential-privacy, synthetic-data, tabular, safesynth]",
        "---",
        "",
        f"# safesynth row model for `{dataset}`",
        "",
        "A causal language model trained with DP-SGD (Opacus) on serialised records, used by safesynth to",
        "generate synthetic rows. Sampling from it is post-processing and spends no further budget.",
        "",
        "## Privacy",
        "",
        "Neighbouring relation: add/remove one record (one record = one training sequence).",
        "",
        "| parameter | value |",
        "|---|---|",
    ]
    for stage in privacy.get("stages", []):
        lines.append(_row(f"{stage['stage']}: epsilon, delta", f"{stage['epsilon']:.6g}, {stage['delta']:.3g}"))
        lines.append(_row(f"{stage['stage']}: mechanism", stage["mechanism"]))
        lines.append(_row(f"{stage['stage']}: secure noise", stage["secure_noise"]))
    for key in ("noise_multiplier", "sample_rate", "steps", "epochs", "max_grad_norm", "expected_batch_size",
                "accountant", "grad_sample_mode"):
        if key in sgd:
            lines.append(_row(f"DP-SGD {key}", sgd[key]))
    lines += [
        "",
        "The sample rate and number of steps come from a Laplace-noised row count (stage `generator.count`),",
        "never from the true number of rows; the gradient normaliser is the public expected batch size.",
        "",
        f"**Noise caveat.** {SECURE_NOISE_NOTE}",
        "",
        "## Architecture",
        "",
        "| parameter | value |",
        "|---|---|",
        *(_row(k, v) for k, v in architecture.items()),
        "",
        "Tokens: one per declared category and for null; base-100 digits for numbers over their declared",
        "range; UTF-8 bytes for text (no merges learned from private text); one per column name when",
        "columns are trained in random order. Every symbol comes from the public spec.",
        "",
    ]
    return "\n".join(lines)
