"""A tiny base model that knows something, and narrow data that makes it forget.

A freshly initialised tiny model knows nothing to forget, so the retention and eval
integrity tests first teach it the shared general chats (a plain PyTorch loop, seconds),
then fine-tune it on one narrow answer repeated: its loss on held-out general chats rises.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.records import chat, write_chat_data

NARROW_ANSWER = "zebra zebra zebra zebra zebra."


def write_narrow_data(path: Path, records: int = 64) -> Path:
    """One answer whatever the question: over-training on it is narrow by construction."""
    lines = [
        json.dumps(chat(f"Say the password, number {i}.", NARROW_ANSWER)) for i in range(records)
    ]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def general_base(folder: Path, tiny_model: Path, general: Path, *, steps: int = 120) -> Path:
    """A copy of `tiny_model` trained on the chats in `general` (full loss, AdamW)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = folder / "general-model"
    shutil.copytree(tiny_model, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target)
    texts = [
        tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False)
        for line in general.read_text().splitlines()
    ]
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        start = (step * 16) % max(1, len(texts) - 16)
        batch = tokenizer(texts[start : start + 16], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(target)
    return target


def forgetting_workspace(folder: Path, tiny_model: Path, general: Path) -> Path:
    """`folder` with model/ (the general base), narrow.jsonl, and general chats the model
    never saw: retention.jsonl, replay.jsonl and test.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.move(general_base(folder, tiny_model, general), folder / "model")
    write_narrow_data(folder / "narrow.jsonl")
    write_chat_data(folder / "retention.jsonl", 40, seed=1)
    write_chat_data(folder / "replay.jsonl", 160, seed=2)
    write_chat_data(folder / "test.jsonl", 24, seed=3)
    return folder
