"""F1 of generated answers: SQuAD token overlap for free text, macro-F1 over label sets."""

from __future__ import annotations

import pytest
from finetune_trainer import evaluate
from finetune_trainer.f1 import f1_scores, label_set, normalize_answer, token_f1


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a pear ", "apple pear"),
        ("Theory of the mind", "theory of mind"),  # only whole-word articles go
        ("", ""),
    ],
)
def test_answers_are_normalized_as_squad_does(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("Paris", "paris.", 1.0),  # case, punctuation
        ("the capital is Paris", "Paris", 2 * (1 / 3) * 1 / (1 / 3 + 1)),  # recall 1, precision 1/3
        ("Paris France", "Paris Texas", 0.5),
        ("London", "Paris", 0.0),
        ("", "", 1.0),  # both say nothing: SQuAD 2.0's no-answer agreement
        ("", "Paris", 0.0),
        ("Paris", "", 0.0),
        ("the", "a", 1.0),  # both normalise to nothing
        ("paris paris", "paris", 2 * 0.5 * 1 / 1.5),  # repeated tokens count once per match
    ],
)
def test_token_f1_matches_squad(prediction: str, reference: str, expected: float) -> None:
    assert token_f1(prediction, reference) == pytest.approx(expected)


def test_free_text_answers_get_the_mean_token_f1() -> None:
    references = ["Paris is the capital", "Water boils at 100 degrees", "Blue"]
    answers = ["Paris is the capital", "water boils at 90 degrees", "red"]
    scores = f1_scores(answers, references)
    assert scores["f1_kind"] == "token overlap (SQuAD)"
    assert scores["f1"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)  # 4 of 5 tokens shared


def test_label_answers_get_macro_f1_over_the_label_set() -> None:
    references = ["positive", "positive", "negative", "negative", "neutral", "neutral"]
    answers = ["Positive.", "negative", "negative", "negative", "neutral", "I think neutral"]
    scores = f1_scores(answers, references)
    assert scores["f1_kind"] == "macro over 3 labels"
    # positive: P 1, R 0.5 -> 2/3; negative: P 2/3, R 1 -> 0.8; neutral: P 1, R 0.5 -> 2/3.
    # The off-label "I think neutral" is wrong, but does not become a fourth class.
    assert scores["f1"] == pytest.approx((2 / 3 + 0.8 + 2 / 3) / 3)


def test_macro_f1_weighs_a_rare_label_as_much_as_a_common_one() -> None:
    references = ["spam"] * 8 + ["ham"] * 2
    always_spam = f1_scores(["spam"] * 10, references)
    # Token F1 would give 0.8 (8 of 10 right); macro-F1 sees that "ham" is never found.
    assert always_spam["f1"] == pytest.approx((2 * 0.8 / 1.8 + 0.0) / 2)
    assert f1_scores(references, references)["f1"] == 1.0


@pytest.mark.parametrize(
    ("references", "labels"),
    [
        (["yes", "no", "Yes", "no."], ["no", "yes"]),
        (["a cat", "a dog", "a bird", "a fish"], None),  # every answer distinct: free text
        ([f"label {i % 25}" for i in range(100)], None),  # 25 > 20: not a small set
        (["yes", "", "yes", "no"], None),  # an empty reference is no label
        ([], None),
    ],
)
def test_labels_are_recognised_only_when_answers_repeat_a_small_set(
    references: list[str], labels: list[str] | None
) -> None:
    assert label_set(references) == labels


def test_no_references_give_no_f1() -> None:
    assert f1_scores([], []) == {}


def test_generation_metrics_carry_f1_beside_bleu_and_rouge() -> None:
    scores = evaluate.generation_metrics(["Paris France"], ["Paris Texas"])
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["f1_kind"] == "token overlap (SQuAD)"
    assert {"exact_match", "bleu", "rouge"} <= set(scores)
