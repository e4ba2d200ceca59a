"""Training throughput and start-up: ours (`finetune run`) against HF Trainer + peft.

Both train the same tiny Llama-shaped model (random weights from a config, built here;
nothing is downloaded) on the same records (the quickstart's), with the same LoRA (r=16 on
every linear layer), global batch (8 sequences), learning rate and schedule, on the CPU
with the machine's cores, in the same precision: fp32, and bf16 where the CPU has bf16
instructions (AMX or AVX512-BF16; ours with `precision: bf16`, the baseline as HF's LoRA
recipes do it: weights loaded in bf16 and `bf16=True`). The baseline pads each batch to
its longest sequence and does not pack, as HF's own examples do; ours runs the job's
defaults (packing).

Every run is a fresh process, timed from start to exit. The 1-step run carries all the
fixed costs (interpreter, imports, Ray, the data stage, loading, saving), so

    steady tokens/s = (tokens of an epoch - tokens of one step) / (T_epoch - T_1step)

with each system's own non-padding training tokens (the same text), and start-up is
T_1step. Each repeat runs the four (ours and the baseline, 1 step and 1 epoch) back to
back, the systems' order alternating between repeats, and gives its own ratios
ours/baseline: runs side by side meet the same load from whatever else the machine runs.
Prints every run, each repeat's ratios, and their median with the range (the spread),
per precision.

The epoch must be long against the start-up's noise (a few seconds on a busy machine):
the quickstart's records (about 23 tokens each) are repeated to --records, and packed rows
of 128 tokens make about 40 steps of 8 rows per 1,000 records. Their lengths hardly vary,
so padding to the longest of a batch wastes little (23 % of HF's slots) and packing has
little to win; `--data mixed` trains instead on synthetic chats of one to three exchanges
(bench/data_stage.py's, about 30 to 600 tokens), a spread like real instruction data's
(use it with `--max-seq-length 512`).

    python bench/train_throughput.py [--repeats 3] [--records 3000] [--max-seq-length 128]
                                     [--precision fp32 bf16] [--data quickstart|mixed]
"""

from __future__ import annotations

import argparse
import itertools
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"),
                        default=["fp32", "bf16"])  # fmt: skip
    parser.add_argument("--data", choices=("quickstart", "mixed"), default="quickstart")
    parser.add_argument("--baseline-run", type=Path, help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args()
    if args.baseline_run:
        return baseline_run(json.loads(args.baseline_run.read_text()))
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as folder:
        return compare(Path(folder), args)


def compare(work: Path, args: argparse.Namespace) -> int:
    from finetune_trainer.tiny_model import write_tiny_model

    data = work / "train.jsonl"
    data.write_text("\n".join(record_lines(args.data, args.records)) + "\n")
    write_tiny_model(work / "model", [data], hidden_size=args.hidden_size)
    print(f"load before: {load_average()}", flush=True)
    from finetune_trainer.precision import bf16_native

    for precision in args.precision:
        if precision == "bf16" and not bf16_native(cuda=False):
            print("bf16: this CPU has no AMX or AVX512-BF16 instructions; not measured")
            continue
        compare_in(work, args, precision)
    return 0


def compare_in(work: Path, args: argparse.Namespace, precision: str) -> None:
    """The repeats of both systems in `precision`, and the ratios' median and spread."""
    steady_ratios, startup_ratios = [], []
    for repeat in range(args.repeats):
        systems = ("ours", "baseline") if repeat % 2 == 0 else ("baseline", "ours")
        runs: dict[tuple[str, str], dict[str, float]] = {}
        for length in ("step", "epoch"):
            for system in systems:
                run = ours if system == "ours" else baseline
                name = f"{system}-{precision}-{length}-{repeat}"
                result = run(work, name, length, args.max_seq_length, precision)
                runs[system, length] = result
                print(
                    f"{precision} {system:8} 1 {length:5}  {result['seconds']:7.1f} s  "
                    f"{result['steps']:4.0f} steps  {result['tokens']:8.0f} tokens",
                    flush=True,
                )
        speed = {s: steady(runs[s, "step"], runs[s, "epoch"]) for s in systems}
        steady_ratios.append(speed["ours"] / speed["baseline"])
        startup_ratios.append(runs["ours", "step"]["seconds"] / runs["baseline", "step"]["seconds"])
        print(
            f"{precision} repeat {repeat}: steady ours {speed['ours']:.0f} vs baseline "
            f"{speed['baseline']:.0f} tokens/s = {steady_ratios[-1]:.2f}x; start-up "
            f"{runs['ours', 'step']['seconds']:.1f} vs {runs['baseline', 'step']['seconds']:.1f} s"
            f" = {startup_ratios[-1]:.2f}x   (load {load_average()})",
            flush=True,
        )
    print(
        f"{precision}: ratio ours/baseline over {args.repeats} repeats, median [min, max]: "
        f"steady throughput {spread(steady_ratios)} (goal >= 2), "
        f"start-up {spread(startup_ratios)} (goal <= 2)",
        flush=True,
    )


def record_lines(kind: str, count: int) -> list[str]:
    """`count` JSONL lines: the quickstart's records repeated, or synthetic mixed chats."""
    if kind == "mixed":
        from data_stage import synthetic_records  # bench/ is this script's import path

        return [json.dumps(record) for record in synthetic_records(count)]
    lines = RECORDS.read_text(encoding="utf-8").splitlines()
    return list(itertools.islice(itertools.cycle(lines), count))


def steady(one: dict[str, float], epoch: dict[str, float]) -> float:
    """Tokens per second of the steps after the first: the epoch less the 1-step run."""
    one_step_tokens = epoch["tokens"] / epoch["steps"]
    return (epoch["tokens"] - one_step_tokens) / (epoch["seconds"] - one["seconds"])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f}, {max(values):.2f}]"


def load_average() -> str:
    """The 1-minute load average against the CPUs: the other work timings share them with."""
    return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def ours(
    work: Path, name: str, length: str, max_seq_length: int, precision: str
) -> dict[str, float]:
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
                "precision": precision,
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


def baseline(
    work: Path, name: str, length: str, max_seq_length: int, precision: str
) -> dict[str, float]:
    config = {
        "model": str(work / "model"),
        "data": str(work / "train.jsonl"),
        "output": str(work / name),
        "max_steps": 1 if length == "step" else -1,
        "max_seq_length": max_seq_length,
        "bf16": precision == "bf16",
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
    dtype = torch.bfloat16 if config["bf16"] else torch.float32
    model = AutoModelForCausalLM.from_pretrained(config["model"], dtype=dtype)
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
        bf16=config["bf16"],  # autocast to bf16 on the CPU, as on a GPU
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
