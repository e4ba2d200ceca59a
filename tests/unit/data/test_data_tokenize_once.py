"""One rendering per record gives exactly the ids and labels of one rendering per prefix.

The reference below is the algorithm the trainer used before: every record rendered
1 + 2 x (assistant turns) times, tokenised and labelled on its own. The batched path must
agree with it token for token on varied conversations and templates, including templates
that rewrite earlier turns, change contents, or reject conversations.
"""

from __future__ import annotations

import random

import pytest
from finetune_trainer.data import build_rows
from finetune_trainer.data.formats import to_messages
from finetune_trainer.data.tokenize import IGNORE_INDEX, RecordTokenizer
from finetune_trainer.errors import DataError

from tests.factories import MakeJob
from tests.unit.data.test_data_tokenize import WithoutOffsets

TEMPLATES = {
    "tiny model (ChatML)": None,
    "ChatML with a default system prompt": (
        "{% if messages[0]['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "Llama 3 (trimmed contents)": (
        "{% for m in messages %}{% set content = '<|start_header_id|>' + m['role'] + "
        "'<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = '<|begin_of_text|>' + content %}{% endif %}"
        "{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{% endif %}"
    ),
    "reasoning dropped from earlier turns": (
        "{% for m in messages %}{% set content = m['content'] %}"
        "{% if m['role'] == 'assistant' and not loop.last and '</think>' in content %}"
        "{% set content = content.split('</think>')[-1].lstrip('\n') %}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "last turn rewritten": (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
        "{% if loop.last %}<end>{% else %}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}\nassistant: {% endif %}"
    ),
    "no markers, no special tokens": (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    ),
    "Mistral-like (no generation prompt, strict roles)": (
        "<s>{% for m in messages %}"
        "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
        "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}"
    ),
}

WORDS = [
    "the",
    "a",
    "stone",
    "river",
    "2",
    "plus",
    "3",
    "is",
    "5",
    "Paris",
    "capital",
    "of",
    "France",
    "why",
    "how",
    "answer",
]


def old_tokenize(record, fmt, tokenizer, template, train_on_prompt):
    """The former tokenize_record: a render per prefix, a record at a time."""
    from jinja2 import TemplateError

    def render(messages, generation_prompt):
        try:
            return tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=generation_prompt,
                chat_template=template,
            )
        except TemplateError as error:
            raise DataError(str(error)) from None

    def find_contents(full, messages):
        spans, cursor = [], 0
        for message in messages:
            content = message["content"]
            position = full.find(content, cursor) if content else -1
            if position < 0:
                continue
            if message["role"] == "assistant":
                spans.append((position, position + len(content)))
            cursor = position + len(content)
        return spans

    if fmt == "text":
        ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = [*ids, tokenizer.eos_token_id]
        return ids, list(ids)
    messages = to_messages(record, fmt)
    full = render(messages, False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:index], True) if index else ""
        through = render(messages[: index + 1], False)
        if not (full.startswith(through) and through.startswith(before)):
            spans = find_contents(full, messages)
            break
        spans.append((len(before), len(through)))
    if not getattr(tokenizer, "is_fast", False):
        input_ids, labels, cursor = [], [], 0
        for start, end in [*spans, (len(full), len(full))]:
            for piece, learn in ((full[cursor:start], train_on_prompt), (full[start:end], True)):
                if piece:
                    ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                    input_ids += ids
                    labels += ids if learn else [IGNORE_INDEX] * len(ids)
            cursor = end
        return input_ids, labels
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    labels, span = [], 0
    for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        while span < len(spans) and spans[span][1] <= start:
            span += 1
        inside = span < len(spans) and spans[span][0] < max(end, start + 1)
        labels.append(token if inside or train_on_prompt else IGNORE_INDEX)
    return list(encoded["input_ids"]), labels


def content(rng: random.Random, earlier: list[str]) -> str:
    kind = rng.random()
    if kind < 0.05:
        return ""
    if kind < 0.1 and earlier:
        return rng.choice(earlier)  # the same text twice in one conversation
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    if kind < 0.2:
        text = f"<think>\n{text}\n</think>\n\n{text}."
    elif kind < 0.3:
        text = rng.choice(["  ", "\n", " \t"]) + text + rng.choice(["  ", "\n", ""])
    elif kind < 0.35:
        text += " <|im_end|>\n<|im_start|>assistant\n"  # template text inside a content
    elif kind < 0.4:
        text += " caf\u00e9 \u00fcber \u4e2d\u6587 \U0001f600 \ue000"
    return text


def conversations(seed: int, count: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        roles = ["system"] if rng.random() < 0.4 else []
        roles += ["user", "assistant"] * rng.randint(1, 4)
        shape = rng.random()
        if shape < 0.08:
            roles = ["assistant", "user", "assistant"]
        elif shape < 0.15:
            roles.append("user")  # ends with a question: nothing to learn
        elif shape < 0.2:
            roles.insert(-1, "tool")
        elif shape < 0.25:
            roles.append("assistant")  # two answers in a row
        earlier: list[str] = []
        messages = []
        for role in roles:
            earlier.append(content(rng, earlier))
            messages.append({"role": role, "content": earlier[-1]})
        records.append({"messages": messages})
    return records


def assert_same_as_before(records, fmt, tokenizer, template, train_on_prompt):
    expected, accepted = [], []
    for record in records:
        try:
            expected.append(old_tokenize(record, fmt, tokenizer, template, train_on_prompt))
            accepted.append(record)
        except DataError:
            with pytest.raises(DataError):
                RecordTokenizer(
                    fmt, tokenizer, chat_template=template, train_on_prompt=train_on_prompt
                ).documents([record])
    documents = RecordTokenizer(
        fmt, tokenizer, chat_template=template, train_on_prompt=train_on_prompt
    ).documents(accepted)
    assert len(documents) == len(expected)
    for record, document, (ids, labels) in zip(accepted, documents, expected, strict=True):
        assert (document.input_ids, document.labels) == (ids, labels), record
    return len(accepted)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_one_rendering_labels_exactly_like_a_rendering_per_prefix(tiny_tokenizer, name):
    records = conversations(seed=len(name), count=150)
    accepted = assert_same_as_before(records, "messages", tiny_tokenizer, TEMPLATES[name], False)
    assert accepted >= 40  # the strict template rejects many conversations, not all


@pytest.mark.parametrize("name", ["tiny model (ChatML)", "Llama 3 (trimmed contents)"])
def test_train_on_prompt_and_tokenizers_without_offsets_agree_too(tiny_tokenizer, name):
    records = conversations(seed=7, count=40)
    template = TEMPLATES[name]
    assert_same_as_before(records, "messages", tiny_tokenizer, template, True)
    assert_same_as_before(records, "messages", WithoutOffsets(tiny_tokenizer), template, False)


def test_alpaca_preference_and_text_records_agree(tiny_tokenizer):
    alpaca = [
        {"instruction": f"Add {i} and {i}.", "input": "" if i % 2 else f"{i} {i}", "output": f"{i}"}
        for i in range(20)
    ]
    preference = [{"prompt": f"Say {i}.", "chosen": f"{i}.", "rejected": "no"} for i in range(20)]
    text = [{"text": " ".join(WORDS[: i % len(WORDS)])} for i in range(20)]
    for fmt, records in (("alpaca", alpaca), ("preference", preference), ("text", text)):
        assert_same_as_before(records, fmt, tiny_tokenizer, None, False)


class CountingRenders:
    """The tiny tokenizer, counting how often a chat template is rendered."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.renders = 0

    def apply_chat_template(self, conversation, **kwargs):
        batched = bool(conversation) and isinstance(conversation[0], list)
        self.renders += len(conversation) if batched else 1
        return self._tokenizer.apply_chat_template(conversation, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_each_record_is_rendered_once(tiny_tokenizer):
    # Two assistant turns each: 5 renders per record the per-prefix way.
    records = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
                {"role": "user", "content": "And doubled?"},
                {"role": "assistant", "content": f"{4 * i}."},
            ]
        }
        for i in range(300)
    ]
    counting = CountingRenders(tiny_tokenizer)
    dataset = MakeJob.data_stage().spec(dataset={"packing": False}).typed_spec().dataset
    rows, _ = build_rows(records, "messages", counting, dataset)
    assert len(rows) == 300
    # One render per record, and one probe of the role sequence (1 + 2 x 2 renders).
    assert counting.renders == 300 + 5
    assert tiny_tokenizer.decode(
        [t for t, label in zip(rows[7]["input_ids"], rows[7]["labels"], strict=True) if label >= 0]
    ) == ("7 plus 7 is 14.<|im_end|>\n28.<|im_end|>\n")


def test_a_batch_names_its_first_conversation_the_template_rejects(tiny_tokenizer):
    template = TEMPLATES["Mistral-like (no generation prompt, strict roles)"]
    fine = {
        "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]
    }
    rejected = {"messages": [{"role": "system", "content": "Be brief."}, *fine["messages"]]}
    tokenizing = RecordTokenizer(
        "messages", tiny_tokenizer, chat_template=template, train_on_prompt=False
    )
    with pytest.raises(DataError, match=r"\(system/user/assistant\): roles must alternate"):
        tokenizing.documents([fine, fine, rejected, fine])
    assert len(tokenizing.documents([fine, fine])) == 2
