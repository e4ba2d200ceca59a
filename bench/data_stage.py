"""Tokenisation benchmark: records/s and peak memory, ours against a `datasets` map.

Ours is `build_rows` (each chat record rendered once, one tokenizer call per batch, labels
from offsets, packing) on the records the data stage yields, on ONE core; `token_stats` is
the same tokenisation streamed, as `finetune data` uses it for its report; "build_rows on
Ray" is what a run does with a large split: Ray tasks tokenise chunks on every core, the
driver packs (Ray is started before the clock, as a run starts it before the data stage;
shipping the tokenizer and the workers' first imports are timed). The baseline is
what Hugging Face recipes do: `Dataset.from_list` and a batched `map` that applies the
chat template and tokenises, with `num_proc` = the cores this process may use (no loss
masks: it does less than ours). Every measurement runs in a fresh process, so its peak RSS
(process and workers together, sampled) is its own. Synthetic chat records, and the tiny
model's tokenizer trained on text like them (no model hub).

    .venv/bin/python bench/data_stage.py [--records 100000] [--small 25000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SEED = 1313
CHILD_TIMEOUT_S = 1800
# "build_rows" and "token_stats" run on one core; "build_rows on Ray" runs one Ray task per
# core; the map runs one process per core.
ON_RAY = "build_rows on Ray"
KINDS = ("build_rows", "token_stats", ON_RAY, "datasets-map")
ONE_CORE = ("build_rows", "token_stats")


def synthetic_records(count: int, seed: int = SEED) -> list[dict[str, Any]]:
    """Chat records as the data stage yields them: cleaned text, optional system prompt,
    one to three exchanges."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ter", "an", "sol", "ve", "ri", "pu", "den", "gra", "os"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(3000)]
    words += ["the", "a", "is", "of", "and", "to", "in", "what", "how", "why", "answer"] * 40

    def text(low: int, high: int) -> str:
        sentence = " ".join(rng.choices(words, k=rng.randint(low, high)))
        return sentence[0].upper() + sentence[1:] + rng.choice([".", "?", "!"])

    records = []
    for _ in range(count):
        messages = [{"role": "system", "content": text(4, 12)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": text(5, 30)})
            messages.append({"role": "assistant", "content": text(5, 40)})
        records.append({"messages": messages})
    return records


class PeakRss:
    """Peak resident memory of this process and its children together: sampled (reading
    /proc costs CPU, hence the long interval), and at least this process's own peak."""

    def __init__(self, interval_s: float = 0.2) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        import resource

        self._stop.set()
        self._thread.join()
        own_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak = max(self.peak, own_kib * 1024)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for process in [self._process, *self._process.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # a worker that just exited
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(self._interval_s)


def count_renders(tokenizer: Any) -> list[int]:
    """Counts the tokenizer's chat template renders into the returned one-item list."""
    counter = [0]
    render = tokenizer.apply_chat_template

    def counted(conversation: list[Any], **kwargs: Any) -> Any:
        batched = bool(conversation) and isinstance(conversation[0], list)
        counter[0] += len(conversation) if batched else 1
        return render(conversation, **kwargs)

    tokenizer.apply_chat_template = counted
    return counter


def run_ours(records: list[dict[str, Any]], tokenizer: Any, kind: str) -> dict[str, Any]:
    from finetune_trainer.data import build_rows, token_stats
    from finetune_trainer.data.tokenize_on_ray import build_rows_on_ray

    from tests.factories import MakeJob

    dataset = MakeJob.data_stage().typed_spec().dataset
    # On Ray the renders happen in the workers, out of this counter's sight.
    renders = count_renders(tokenizer) if kind != ON_RAY else [0]
    started = time.perf_counter()
    if kind == "token_stats":
        stats = token_stats(iter(records), "messages", tokenizer, dataset)
    elif kind == ON_RAY:
        cores = len(os.sched_getaffinity(0))
        _rows, stats = build_rows_on_ray(records, "messages", tokenizer, dataset, workers=cores)
    else:
        _rows, stats = build_rows(records, "messages", tokenizer, dataset)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": stats["tokens"], "renders": renders[0]}


def run_datasets_map(records: list[dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    import datasets

    datasets.disable_progress_bars()

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in batch["messages"]]
        return {"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}

    started = time.perf_counter()
    table = datasets.Dataset.from_list(records)
    tokenized = table.map(
        tokenize, batched=True, num_proc=len(os.sched_getaffinity(0)), remove_columns=["messages"]
    )
    tokens = sum(len(ids) for ids in tokenized["input_ids"])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": tokens, "renders": len(records)}


def cpu_seconds(kind: str) -> float:
    """CPU time of this process and its finished children (the map's workers); on Ray, of
    this process and every live descendant (Ray's own processes and its workers)."""
    import resource

    if kind == ON_RAY:
        import psutil

        total = 0.0
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.Error:  # a process that just exited
                continue
            total += times.user + times.system
        return total

    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def child(kind: str, count: int, model_dir: str) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    from transformers import AutoTokenizer

    if kind in ONE_CORE:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    records = synthetic_records(count)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if kind == ON_RAY:
        import ray

        cores = len(os.sched_getaffinity(0))
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    cpu = cpu_seconds(kind)
    with PeakRss() as rss:
        if kind == "datasets-map":
            result = run_datasets_map(records, tokenizer)
        else:
            result = run_ours(records, tokenizer, kind)
    cpu = cpu_seconds(kind) - cpu
    assistant_turns = sum(m["role"] == "assistant" for r in records for m in r["messages"])
    result |= {
        "records": count,
        "records_per_second": count / result["seconds"],
        "cpu_us_per_record": cpu / count * 1e6,
        "peak_rss_mib": rss.peak / 2**20,
        "renders_per_record": result["renders"] / count,
        "renders_per_record_one_per_prefix": (count + 2 * assistant_turns) / count,
    }
    print(json.dumps(result))


def measure(kind: str, count: int, model_dir: Path) -> dict[str, Any]:
    environment = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    if kind in ONE_CORE:
        # The Rust tokenizer would otherwise spread a batch over threads.
        environment["RAYON_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as cache:
        environment["HF_DATASETS_CACHE"] = cache
        finished = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--records", str(count), str(model_dir)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    if finished.returncode:
        raise SystemExit(f"{kind} on {count} records failed:\n{finished.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=25_000, help="size for the RSS growth")
    parser.add_argument("--child", choices=KINDS)
    parser.add_argument("model_dir", nargs="?")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.records, args.model_dir)
        return 0

    from finetune_trainer.tiny_model import write_tiny_model

    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "corpus.jsonl"
        corpus.write_text("\n".join(map(json.dumps, synthetic_records(2000, SEED + 1))))
        model_dir = write_tiny_model(Path(folder) / "model", [corpus])
        results = {
            (kind, count): measure(kind, count, model_dir)
            for count in (args.small, args.records)
            for kind in KINDS
        }
    cores = len(os.sched_getaffinity(0))
    print(
        f"\n{'':<30}{'records':>9}{'records/s':>11}{'CPU us/rec':>12}{'peak RSS MiB':>14}"
        f"{'renders/rec':>13}"
    )
    for (kind, count), result in results.items():
        name = kind + (" (1 core)" if kind in ONE_CORE else f" ({cores} cores)")
        print(
            f"{name:<30}{count:>9}{result['records_per_second']:>11.0f}"
            f"{result['cpu_us_per_record']:>12.0f}{result['peak_rss_mib']:>14.0f}"
            f"{result['renders_per_record'] or '-':>13.5}"
        )
    large, small = args.records, args.small
    theirs = results["datasets-map", large]
    if results["build_rows", large]["tokens"] != theirs["tokens"]:
        print("note: the map made a different number of tokens than build_rows")
    if results["build_rows", large]["tokens"] != results[ON_RAY, large]["tokens"]:
        raise SystemExit("build_rows on Ray made a different number of tokens than build_rows")

    def ratio(kind: str, key: str) -> float:
        return round(results[kind, large][key] / theirs[key], 2)

    summary = {
        "cores": cores,
        "records_per_second_vs_datasets_map": {
            kind: ratio(kind, "records_per_second") for kind in KINDS[:-1]
        },
        # CPU per record, theirs over ours: what one core of each gets done.
        "work_per_cpu_second_vs_datasets_map": {
            kind: round(1 / ratio(kind, "cpu_us_per_record"), 2) for kind in KINDS[:-1]
        },
        f"peak_rss_growth_{small}_to_{large}": {
            kind: round(
                results[kind, large]["peak_rss_mib"] / results[kind, small]["peak_rss_mib"], 2
            )
            for kind in KINDS
        },
        "renders_per_record": round(results["build_rows", large]["renders_per_record"], 3),
        "renders_per_record_one_per_prefix": round(
            results["build_rows", large]["renders_per_record_one_per_prefix"], 2
        ),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
