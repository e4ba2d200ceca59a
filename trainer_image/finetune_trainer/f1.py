"""F1 of generated answers: token overlap for free text, macro-F1 when answers are labels.

Token-overlap F1 is SQuAD's (the official v1.1/v2.0 evaluation script's normalisation:
lower case, punctuation and the articles a/an/the removed, whitespace collapsed), written
here because `evaluate`'s `squad` metric is a script fetched from the Hugging Face Hub at
load time, which an offline cluster cannot do. Macro-F1 is scikit-learn's `f1_score`.
"""

from __future__ import annotations

import re
import string
from collections import Counter

# References drawn from at most this many distinct answers are labels (sentiment, triage).
MAX_LABELS = 20
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation; two empty answers
    agree (1.0), one empty answer shares nothing (0.0), as SQuAD 2.0 scores no-answers."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def label_set(references: list[str]) -> list[str] | None:
    """The labels, when every reference is one of a small set that repeats (each label
    seen twice on average at least); None for free-text answers."""
    labels = sorted({normalize_answer(reference) for reference in references})
    if not labels or "" in labels:
        return None
    if len(labels) > MAX_LABELS or 2 * len(labels) > len(references):
        return None
    return labels


def f1_scores(answers: list[str], references: list[str]) -> dict[str, float | str]:
    """`f1` in [0, 1] and `f1_kind`: macro-F1 over the label set when the references are
    labels (an answer that is no label counts as wrong), else mean token-overlap F1."""
    from sklearn.metrics import f1_score

    if not references:
        return {}
    labels = label_set(references)
    if labels is None:
        scores = [token_f1(a, r) for a, r in zip(answers, references, strict=True)]
        return {"f1": sum(scores) / len(scores), "f1_kind": "token overlap (SQuAD)"}
    # Restricting to `labels` keeps an off-label answer out of the average as a class of
    # its own while it still costs its reference label recall.
    score = f1_score(
        [normalize_answer(r) for r in references],
        [normalize_answer(a) for a in answers],
        labels=labels,
        average="macro",
        zero_division=0.0,
    )
    return {"f1": float(score), "f1_kind": f"macro over {len(labels)} labels"}
