"""GPU throughput of a Llama-shaped ~1B model at L=4096, bf16: ours against HF Trainer.

The model has Llama 3.2 1B's shape (16 layers, hidden 2048, MLP 8192, 32 heads, 8 KV
heads, vocabulary 128,256) with random weights from its config; nothing is downloaded.
The records are synthetic chat turns of 300 to 4,000 tokens. Each system trains LoRA
(r=16, every linear layer) and a full fine-tune with a global batch of 8 sequences
(micro batch 2) in bf16 for a few steps on one GPU:

- ours: `finetune run` (packing to 4096, gradientCheckpointing auto, fused AdamW);
- HF Trainer + peft with SDPA attention, padding to the longest sequence, no packing;
  and with FlashAttention 2 when `flash_attn` is importable.

Reported per run: tokens/s/GPU (non-padding tokens, median over the steps after the
first two), MFU by reports.mfu (6N for trained weights, 4N for frozen ones, over the
H100/H200's 989 TFLOP/s dense bf16) and peak memory. Needs a CUDA GPU; without one it
says so and does nothing (so `make bench` passes on CPU machines).

    python bench/gpu_throughput.py [--steps 12] [--methods lora full]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEQ, BATCH, MICRO, LORA_R, LORA_ALPHA, LEARNING_RATE = 4096, 8, 2, 16, 32, 1e-4
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128_256,
    "max_position_embeddings": 8192,
    "rope_theta": 500_000.0,
    "tie_word_embeddings": True,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--methods", nargs="+", default=["lora", "full"])
    parser.add_argument("--baseline-run", type=Path, help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(
            "bench/gpu_throughput.py: needs a CUDA GPU and this machine has none; "
            "nothing measured (run it on a GPU machine)"
        )
        return 0
    if args.baseline_run:
        return baseline_run(json.loads(args.baseline_run.read_text()))
    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as folder:
        return compare(Path(folder), args)


def compare(work: Path, args: argparse.Namespace) -> int:
    import torch

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    write_model(work / "model", work / "train.jsonl", args.records)
    attentions = ["sdpa"] + (["flash_attention_2"] if flash_attention_available() else [])
    if len(attentions) == 1:
        print("flash_attn is not importable here: the baseline runs with SDPA only")
    results = []
    for method in args.methods:
        results.append(("ours", method, ours(work, method, args.steps)))
        for attention in attentions:
            name = f"HF Trainer ({attention})"
            results.append((name, method, baseline(work, method, attention, args.steps)))
    print(f"\n{'system':32} {'method':6} {'tokens/s/GPU':>13} {'MFU':>6} {'peak GiB':>9}")
    for system, method, r in results:
        print(
            f"{system:32} {method:6} {r['tokens_per_second']:13.0f} {r['mfu']:6.1%} "
            f"{r['peak_memory_gib']:9.1f}"
        )
    for method in args.methods:
        ours_speed = next(r for s, m, r in results if s == "ours" and m == method)
        for system, m, r in results:
            if m == method and system != "ours":
                ratio = ours_speed["tokens_per_second"] / r["tokens_per_second"]
                print(f"{method}: ours / {system}: {ratio:.2f}x tokens/s")
    return 0


def flash_attention_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def write_model(model_dir: Path, data: Path, records: int) -> None:
    """Llama 3.2 1B's shape with random bf16 weights, a BPE tokenizer and long records."""
    import torch
    from finetune_trainer.tiny_model import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(0)
    words = [f"w{n}" for n in range(5000)]
    lines = []
    for _ in range(records):
        length = rng.randint(150, 2000)  # words; about two tokens each
        answer = " ".join(rng.choice(words) for _ in range(length))
        question = " ".join(rng.choice(words) for _ in range(20))
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages}))
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = build_tokenizer([" ".join(words)] * 4, vocab_size=8000)
    tokenizer.save_pretrained(model_dir)
    config = LlamaConfig(
        **LLAMA_1B,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(model_dir)


def ours(work: Path, method: str, steps: int) -> dict[str, float]:
    name = f"ours-{method}"
    job = {
        "apiVersion": "finetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "gpu-bench"},
        "spec": {
            "model": {"source": str(work / "model")},
            "dataset": {
                "train": {"source": str(work / "train.jsonl"), "format": "messages"},
                "validationSplit": 0.0,
                "maxSeqLength": SEQ,
                "cleaning": {"dedup": "none", "redactPII": False, "removeLeakage": False},
            },
            "method": {
                "type": method,
                "lora": {
                    "r": LORA_R,
                    "alpha": LORA_ALPHA,
                    "dropout": 0.0,
                    "targetModules": ["all-linear"],
                },
            },
            "hyperparameters": {
                "maxSteps": steps,
                "learningRate": LEARNING_RATE,
                "batchSize": BATCH,
                "microBatchSize": MICRO,
                "precision": "bf16",
                "gradientCheckpointing": "auto",
            },
            "evaluation": {"metrics": ["loss"]},
            "deepspeed": {"zeroStage": 2},
            "resources": {"workers": 1, "gpusPerWorker": 1, "cpusPerWorker": 8},
            "checkpointing": {"everySteps": 100_000, "keep": 1},
            "output": {"destination": str(work / name)},
        },
    }
    path = work / f"{name}.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    subprocess.run(
        [str(Path(sys.executable).parent / "finetune"), "run", str(path)], check=True, cwd=ROOT
    )
    history = [json.loads(line) for line in (work / name / "history.jsonl").open()]
    trained = [row for row in history if "tokens_per_second" in row][2:]
    return {
        "tokens_per_second": statistics.median(r["tokens_per_second"] for r in trained),
        "mfu": statistics.median(r.get("mfu", float("nan")) for r in trained),
        "peak_memory_gib": max(r.get("peak_memory_gib", 0.0) for r in trained),
    }


def baseline(work: Path, method: str, attention: str, steps: int) -> dict[str, float]:
    output = work / f"hf-{method}-{attention}"
    config = {
        "model": str(work / "model"),
        "data": str(work / "train.jsonl"),
        "output": str(output),
        "method": method,
        "attention": attention,
        "steps": steps,
    }
    path = work / f"{output.name}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    subprocess.run([sys.executable, __file__, "--baseline-run", str(path)], check=True, cwd=ROOT)
    result: dict[str, float] = json.loads((output / "result.json").read_text())
    return result


def baseline_run(config: dict[str, Any]) -> int:
    """HF Trainer + peft as its examples do it, timing each optimizer step."""
    import torch
    from finetune_trainer.reports import mfu
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    model = AutoModelForCausalLM.from_pretrained(
        config["model"], dtype=torch.bfloat16, attn_implementation=config["attention"]
    )
    if config["method"] == "lora":
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
        text = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False)
        ids = tokenizer(text, truncation=True, max_length=SEQ)["input_ids"]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    timer = StepTimer()
    arguments = TrainingArguments(
        output_dir=config["output"],
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=BATCH // MICRO,
        max_steps=config["steps"],
        learning_rate=LEARNING_RATE,
        bf16=True,
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=2,
        dataloader_pin_memory=True,
        optim="adamw_torch_fused",
        seed=0,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=examples,
        data_collator=collator,
        callbacks=[timer],
    )
    trainer.train()
    # Non-padding tokens per step: the sampler is random, so use the records' mean length.
    tokens_per_step = BATCH * statistics.mean(len(e["input_ids"]) for e in examples)
    step_seconds = statistics.median(
        b - a for a, b in zip(timer.times[1:], timer.times[2:], strict=False)
    )
    speed = tokens_per_step / step_seconds
    name = torch.cuda.get_device_name()
    peak = 989e12 if ("H100" in name or "H200" in name) else float("nan")
    result = {
        "tokens_per_second": speed,
        "mfu": mfu(speed, trainable=trainable, total=total, peak_flops=peak),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    output = Path(config["output"])
    output.mkdir(parents=True, exist_ok=True)
    (output / "result.json").write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
