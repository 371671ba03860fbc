"""Metrics of generated texts against the real ones, for ``bench_text.py``.

Everything here is public-data benchmarking: the inputs are the shared reviews file and synthetic texts.

* :func:`text_tstr`: a TF-IDF (word 1-2 grams) + logistic regression classifier trained on one set of
  texts and labels, tested on the real test texts (accuracy, ROC AUC).
* :func:`length_stats`, :func:`vocab_stats`: length quantiles (characters, words) and how much of the
  generated vocabulary is real (occurs in the training texts).
* :func:`copy_stats`: verbatim and near-verbatim copies of training texts (definitions in its docstring).
* :class:`Perplexity`: perplexity of texts under a public pretrained model (``smollm2-135m``).
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_QUANTILES = (0.1, 0.5, 0.9)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits, with an inner apostrophe: ``don't``)."""
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    """Whitespace collapsed and stripped (the verbatim-copy comparison)."""
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------ utility


def text_tstr(train_texts: Sequence[str], train_labels: Sequence[bool], test_texts: Sequence[str],
              test_labels: Sequence[bool]) -> dict[str, float | None]:
    """Accuracy and ROC AUC on the test texts of a classifier fitted on ``train_texts``.

    TF-IDF of word 1- and 2-grams (sublinear tf, at most 50,000 features) and an L2 logistic regression
    (C=1, balanced class weights, so that accuracy is not the majority share by default). None when the
    training labels have one class or the texts have no words; ROC AUC None when the test labels have one.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    y = np.asarray(train_labels, dtype=bool)
    if len(y) < 2 or y.all() or not y.any():
        return {"accuracy": None, "roc_auc": None}
    vectoriser = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=50_000,
                                 token_pattern=_WORD.pattern, lowercase=True)
    try:
        features = vectoriser.fit_transform(train_texts)
    except ValueError:  # empty vocabulary
        return {"accuracy": None, "roc_auc": None}
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(features, y)
    test = vectoriser.transform(test_texts)
    truth = np.asarray(test_labels, dtype=bool)
    auc = float(roc_auc_score(truth, model.predict_proba(test)[:, 1])) if 0 < truth.sum() < len(truth) else None
    return {"accuracy": float(accuracy_score(truth, model.predict(test))), "roc_auc": auc}


# ------------------------------------------------------------------------------------------ form


def length_stats(texts: Sequence[str], prefix: str) -> dict[str, float]:
    """Quantiles (10/50/90 %) of characters and words per text."""
    chars = np.array([len(t) for t in texts], dtype=float)
    n_words = np.array([len(words(t)) for t in texts], dtype=float)
    out: dict[str, float] = {}
    for q in _QUANTILES:
        out[f"{prefix}chars_q{int(q * 100)}"] = float(np.quantile(chars, q)) if len(chars) else math.nan
        out[f"{prefix}words_q{int(q * 100)}"] = float(np.quantile(n_words, q)) if len(n_words) else math.nan
    return out


def vocab_stats(train_texts: Sequence[str], texts: Sequence[str], *, top: int = 1000) -> dict[str, float]:
    """How real the generated words are, and how much of the real vocabulary they use.

    ``word_overlap``: share of generated word tokens (with repeats) that occur in the training texts.
    ``type_overlap``: share of distinct generated words that occur in the training texts.
    ``coverage``: share of the training vocabulary (distinct words) that occurs in the generated texts;
    ``coverage_top``: the same for the ``top`` most frequent training words (coverage grows with the
    number of texts: compare rows with the same count).
    """
    train_counts = Counter(w for t in train_texts for w in words(t))
    generated = Counter(w for t in texts for w in words(t))
    tokens = sum(generated.values())
    top_words = {w for w, _ in train_counts.most_common(top)}
    return {
        "word_overlap": sum(c for w, c in generated.items() if w in train_counts) / tokens if tokens else 0.0,
        "type_overlap": sum(1 for w in generated if w in train_counts) / len(generated) if generated else 0.0,
        "coverage": sum(1 for w in train_counts if w in generated) / max(1, len(train_counts)),
        "coverage_top": sum(1 for w in top_words if w in generated) / max(1, len(top_words)),
        "distinct_words": float(len(generated)),
    }


# ------------------------------------------------------------------------------------------ copies


def _shingles(text: str, size: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}


def copy_stats(train_texts: Sequence[str], texts: Sequence[str], *, shingle: int = 8, similarity: float = 0.9,
               candidates: int = 5) -> dict[str, float]:
    """Verbatim and near-verbatim copies of training texts among ``texts``.

    * ``verbatim``: share of texts equal to a training text after whitespace normalisation.
    * ``shared_shingle``: share of texts that contain a run of ``shingle`` consecutive words (lower-cased)
      that also occurs in some training text.
    * ``near_copy``: share of texts whose similarity to the nearest training text is >= ``similarity``.
      Similarity is difflib's ratio (2 * matching characters / total characters) of the lower-cased,
      whitespace-normalised texts; "nearest" is the best of the ``candidates`` training texts with the
      highest TF-IDF cosine on character 3-grams (an approximate nearest neighbour: exact search over all
      pairs costs minutes here).
    * ``similarity_q50`` / ``similarity_q90``: quantiles of that nearest similarity.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not texts:
        return {"verbatim": 0.0, "shared_shingle": 0.0, "near_copy": 0.0, "similarity_q50": math.nan,
                "similarity_q90": math.nan}
    train_norm = [normalise(t).lower() for t in train_texts]
    norm = [normalise(t).lower() for t in texts]
    exact = {normalise(t) for t in train_texts}
    verbatim = np.mean([normalise(t) in exact for t in texts])
    train_shingles: set[tuple[str, ...]] = set().union(*(_shingles(t, shingle) for t in train_norm))
    shared = np.mean([bool(_shingles(t, shingle) & train_shingles) for t in norm])
    vectoriser = TfidfVectorizer(analyzer="char", ngram_range=(3, 3), sublinear_tf=True)
    train_matrix = vectoriser.fit_transform(train_norm)
    cosine = (vectoriser.transform(norm) @ train_matrix.T).toarray()
    k = min(candidates, len(train_norm))
    nearest = np.argpartition(-cosine, k - 1, axis=1)[:, :k]
    best = np.array([max(difflib.SequenceMatcher(None, t, train_norm[j], autojunk=False).ratio() for j in row)
                     for t, row in zip(norm, nearest, strict=True)])
    return {"verbatim": float(verbatim), "shared_shingle": float(shared),
            "near_copy": float(np.mean(best >= similarity)),
            "similarity_q50": float(np.quantile(best, 0.5)), "similarity_q90": float(np.quantile(best, 0.9))}


# ------------------------------------------------------------------------------------------ perplexity


class Perplexity:
    """Perplexity of texts under a public pretrained causal LM, loaded once (float32, CPU).

    Each text is scored after the tokenizer's BOS token (or ``<|endoftext|>`` when it has none), so the
    first word is scored too. ``corpus`` is exp(total NLL / total tokens); ``median`` the median of the
    per-text perplexities (robust to a few degenerate texts).
    """

    def __init__(self, model: str = "smollm2-135m") -> None:
        from safesynth.generator.llm.pretrained import load_pretrained, resolve_model

        self.name = model
        self.model, self.tokenizer = load_pretrained(resolve_model(model, base_dir="."))

    def __call__(self, texts: Sequence[str], *, batch_size: int = 16) -> dict[str, Any]:
        import torch

        from safesynth.generator.llm.model import torch_threads

        start_id = self.tokenizer.bos_token_id
        if start_id is None:
            start_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else start_id
        encoded = [[start_id, *self.tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts if t.strip()]
        per_text: list[float] = []
        total_nll, total_tokens = 0.0, 0
        with torch.inference_mode(), torch_threads():
            for i in range(0, len(encoded), batch_size):
                batch = encoded[i:i + batch_size]
                width = max(len(ids) for ids in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, row in enumerate(batch):
                    ids[r, :len(row)] = torch.tensor(row)
                    mask[r, :len(row)] = 1
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
                nll = nll * mask[:, 1:]
                for r in range(len(batch)):
                    n = int(mask[r, 1:].sum())
                    total_nll += float(nll[r].sum())
                    total_tokens += n
                    per_text.append(math.exp(float(nll[r].sum()) / max(1, n)))
        return {"corpus": math.exp(total_nll / total_tokens) if total_tokens else math.nan,
                "median": float(np.median(per_text)) if per_text else math.nan, "texts": len(per_text),
                "tokens": total_tokens}

    def token_count(self, texts: Sequence[str]) -> int:
        """Tokens of ``texts`` under this model's tokenizer (a unit that is the same for every generator)."""
        return sum(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
