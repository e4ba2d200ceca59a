"""Training throughput and start-up: ours (`finetune run`) against HF Trainer + peft.

Both train the same tiny Llama-shaped model (random weights from a config, built here;
nothing is downloaded) on the same records (the quickstart's), with the same LoRA (r=16 on
every linear layer), global batch (8 sequences), learning rate and schedule, in fp32 on
the CPU with the machine's cores. The baseline pads each batch to its longest sequence
and does not pack, as HF's own examples do; ours runs the job's defaults (packing).

Every run is a fresh process, timed from start to exit. Per repeat, interleaved: ours 1
step, baseline 1 step, ours 1 epoch, baseline 1 epoch. The 1-step run carries all the
fixed costs (interpreter, imports, Ray, the data stage, loading, saving), so

    steady tokens/s = (tokens of an epoch - tokens of one step) / (T_epoch - T_1step)

with each system's own non-padding training tokens (the same text), and start-up is
T_1step. Prints each run and the ratios ours/baseline (medians over the repeats).

The quickstart's records are short (about 23 tokens), so packed rows of 128 tokens make
an epoch of a dozen steps from 600 records; longer rows would make it one or two.

    python bench/train_throughput.py [--repeats 2] [--records 600] [--max-seq-length 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "examples" / "quickstart" / "data" / "train.jsonl"
BATCH, LEARNING_RATE, LORA_R, LORA_ALPHA, SEED = 8, 5e-3, 16, 32, 42


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--baseline-run", type=Path, help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args()
    if args.baseline_run:
        return baseline_run(json.loads(args.baseline_run.read_text()))
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as folder:
        return compare(Path(folder), args)


def compare(work: Path, args: argparse.Namespace) -> int:
    from finetune_trainer.tiny_model import write_tiny_model

    lines = RECORDS.read_text(encoding="utf-8").splitlines()[: args.records]
    data = work / "train.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_tiny_model(work / "model", [data], hidden_size=args.hidden_size)
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for repeat in range(args.repeats):
        for length in ("step", "epoch"):
            for system, run in (("ours", ours), ("baseline", baseline)):
                result = run(work, f"{system}-{length}-{repeat}", length, args.max_seq_length)
                runs.setdefault((system, length), []).append(result)
                print(
                    f"{system:8} 1 {length:5}  {result['seconds']:7.1f} s  "
                    f"{result['steps']:4.0f} steps  {result['tokens']:8.0f} tokens",
                    flush=True,
                )
    summary = {
        system: summarise(runs[system, "step"], runs[system, "epoch"])
        for system in ("ours", "baseline")
    }
    for system, numbers in summary.items():
        print(
            f"{system:8} steady {numbers['steady']:9.0f} tokens/s   "
            f"start-up (1-step run) {numbers['startup']:6.1f} s"
        )
    steady = summary["ours"]["steady"] / summary["baseline"]["steady"]
    startup = summary["ours"]["startup"] / summary["baseline"]["startup"]
    print(
        f"ratio ours/baseline: steady throughput {steady:.2f}x (goal >= 2), "
        f"start-up {startup:.2f}x (goal <= 2)"
    )
    return 0


def summarise(steps: list[dict[str, float]], epochs: list[dict[str, float]]) -> dict[str, float]:
    speeds = []
    for one, epoch in zip(steps, epochs, strict=True):
        one_step_tokens = epoch["tokens"] / epoch["steps"]
        speeds.append((epoch["tokens"] - one_step_tokens) / (epoch["seconds"] - one["seconds"]))
    return {
        "steady": statistics.median(speeds),
        "startup": statistics.median(r["seconds"] for r in steps),
    }


def ours(work: Path, name: str, length: str, max_seq_length: int) -> dict[str, float]:
    job = {
        "apiVersion": "finetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bench"},
        "spec": {
            "model": {"source": str(work / "model")},
            "dataset": {
                "train": {"source": str(work / "train.jsonl"), "format": "messages"},
                "validationSplit": 0.0,
                "maxSeqLength": max_seq_length,
                "cleaning": {"dedup": "none", "redactPII": False, "removeLeakage": False},
            },
            "method": {
                "type": "lora",
                "lora": {
                    "r": LORA_R,
                    "alpha": LORA_ALPHA,
                    "dropout": 0.0,
                    "targetModules": ["all-linear"],
                },
            },
            "hyperparameters": {
                "epochs": 1,
                "learningRate": LEARNING_RATE,
                "batchSize": BATCH,
                "microBatchSize": BATCH,
                "precision": "fp32",
                "seed": SEED,
            }
            | ({"maxSteps": 1} if length == "step" else {}),
            "evaluation": {"metrics": ["loss"]},
            "resources": {"workers": 1, "gpusPerWorker": 0, "cpusPerWorker": os.cpu_count() or 1},
            "checkpointing": {"everySteps": 100_000, "keep": 1},
            "output": {"destination": str(work / name)},
        },
    }
    path = work / f"{name}.json"  # JSON is YAML
    path.write_text(json.dumps(job), encoding="utf-8")
    finetune = Path(sys.executable).parent / "finetune"
    seconds = timed([str(finetune), "run", str(path)])
    out = work / name
    report = json.loads((out / "data_report.json").read_text())
    steps = json.loads((out / "metrics.json").read_text())["steps"]
    # An epoch is the whole batches of packed rows; the tokens they hold, pro rata.
    trained = report["tokens"] * min(1.0, steps * BATCH / report["rows"])
    return {"seconds": seconds, "steps": steps, "tokens": trained}


def baseline(work: Path, name: str, length: str, max_seq_length: int) -> dict[str, float]:
    config = {
        "model": str(work / "model"),
        "data": str(work / "train.jsonl"),
        "output": str(work / name),
        "max_steps": 1 if length == "step" else -1,
        "max_seq_length": max_seq_length,
    }
    path = work / f"{name}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    seconds = timed([sys.executable, __file__, "--baseline-run", str(path)])
    result = json.loads((work / name / "result.json").read_text())
    return {"seconds": seconds, "steps": result["steps"], "tokens": result["tokens"]}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - started


def baseline_run(config: dict[str, Any]) -> int:
    """HF Trainer + peft as its examples do it: chat template, pad to longest, no packing."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    model = AutoModelForCausalLM.from_pretrained(config["model"], dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=LORA_R,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    examples = []
    for line in Path(config["data"]).read_text(encoding="utf-8").splitlines():
        try:
            messages = json.loads(line)["messages"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # the quickstart data holds a few malformed lines; ours drops them too
        if not well_formed(messages):
            continue
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, truncation=True, max_length=config["max_seq_length"])["input_ids"]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids})
    arguments = TrainingArguments(
        output_dir=config["output"],
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        max_steps=config["max_steps"],
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="cosine",
        seed=SEED,
        use_cpu=True,
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    trainer = Trainer(model=model, args=arguments, train_dataset=examples, data_collator=collator)
    state = trainer.train()
    model.save_pretrained(Path(config["output"]) / "adapter")
    steps = state.global_step
    tokens = sum(len(e["input_ids"]) for e in examples) * min(1.0, steps * BATCH / len(examples))
    result = {"steps": steps, "tokens": tokens}
    (Path(config["output"]) / "result.json").write_text(json.dumps(result), encoding="utf-8")
    return 0


def well_formed(messages: Any) -> bool:
    roles = ("system", "user", "assistant")
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(
            isinstance(m, dict) and m.get("role") in roles and isinstance(m.get("content"), str)
            for m in messages
        )
    )


if __name__ == "__main__":
    sys.exit(main())
