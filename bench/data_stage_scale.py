"""How the data stage scales on Ray Data: records/s on 1 and 2 CPUs, and peak memory.

1. Records/s of the whole data stage (read, clean, redact with Presidio + spaCy, dedup,
   split, write), as `finetune prepare` runs it, with 1 and with 2 Ray Data workers on
   a local Ray instance of 2 CPUs, and in the driver alone for reference; the labelled
   synthetic chats of tests/deid_corpus.py (realistic names, addresses, IDs).
2. Peak RSS of the driver and of the Ray worker processes while ~1 GB of JSONL streams
   through the stage with 2 workers. Redaction is off for this part unless --redact-all:
   at ~30-100 records/s per core, redacting a million records takes hours on a laptop;
   part 1 gives the workers' memory with the NER model loaded.

    .venv/bin/python bench/data_stage_scale.py [--size-mb 1024] [--records 400] [--quick]

RSS counts shared pages (Ray's object store is shared memory), so the sum over processes
overstates what the machine used; the driver's own peak is the number that must stay flat.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from tests.deid_corpus import Corpus, chat_lines
from tests.factories import MakeJob

BENCH_SEED = 5151
CPUS = 2
MIB = 2**20


class PeakMemory:
    """Samples the RSS of this process and of its Ray worker processes in a thread."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.driver, self.worker, self.workers = every, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            total = 0
            for child in me.children(recursive=True):
                try:
                    if not child.name().startswith("ray::"):
                        continue
                    rss = child.memory_info().rss
                except psutil.Error:  # a worker that just exited
                    continue
                self.worker, total = max(self.worker, rss), total + rss
            self.workers = max(self.workers, total)
            self._stop.wait(self.every)

    def as_dict(self) -> dict[str, float]:
        return {
            "driver_peak_rss_mib": round(self.driver / MIB),
            "one_worker_peak_rss_mib": round(self.worker / MIB),
            "all_workers_peak_rss_mib": round(self.workers / MIB),
        }


def write_big_jsonl(path: Path, size_bytes: int, lines: list[str]) -> int:
    """Repeat the corpus, each copy made distinct, until the file holds size_bytes."""
    written = count = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size_bytes:
            for line in lines:
                record = json.loads(line)
                record["messages"][-1]["content"] = f"Noted, case {count}."
                text = json.dumps(record) + "\n"
                out.write(text)
                written, count = written + len(text), count + 1
                if written >= size_bytes:
                    break
    return count


def stage(folder: Path, *, redact: bool, workers: int | None) -> tuple[float, dict[str, Any]]:
    """Seconds of the whole stage as `finetune prepare` runs it, and its report."""
    from finetune_trainer.data.pipeline import stream_prepared

    spec = (
        MakeJob.data_stage()
        .spec(dataset={"validationSplit": 0.05, "cleaning": {"redactPII": redact}})
        .typed_spec()
    )
    started = time.perf_counter()
    report = stream_prepared(spec, folder / "out", base_dir=folder, workers=workers)
    return time.perf_counter() - started, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=400, help="records for the rates")
    parser.add_argument("--size-mb", type=int, default=1024, help="JSONL size for the RSS run")
    parser.add_argument("--quick", action="store_true", help="--records 100 --size-mb 16")
    parser.add_argument("--redact-all", action="store_true", help="redact in the RSS run too")
    args = parser.parse_args()
    if args.quick:
        args.records, args.size_mb = 100, 16
    import ray

    ray.init(num_cpus=CPUS, object_store_memory=256 * MIB, include_dashboard=False)
    results: dict[str, Any] = {"cpus_on_this_machine": os.cpu_count(),
                               "load_average_at_start": os.getloadavg()[0]}  # fmt: skip
    lines = chat_lines(Corpus(BENCH_SEED).documents(args.records))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        rates: dict[str, Any] = {}
        for name, workers in (("driver only", None), ("1 CPU", 1), ("2 CPUs", 2)):
            with PeakMemory() as memory:
                seconds, _ = stage(folder, redact=True, workers=workers)
            rates[name] = {"records_per_second": round(len(lines) / seconds, 1)}
            rates[name] |= memory.as_dict()
            print(f"redaction on, {name}: {rates[name]}", flush=True)
        one, two = rates["1 CPU"], rates["2 CPUs"]
        rates["ratio_2_to_1_cpu"] = round(two["records_per_second"] / one["records_per_second"], 2)
        results["records_per_second_with_redaction"] = rates

        big = folder / "big"
        big.mkdir()
        count = write_big_jsonl(big / "train.jsonl", args.size_mb * MIB, lines)
        with PeakMemory() as memory:
            seconds, report = stage(big, redact=args.redact_all, workers=CPUS)
        results["streaming"] = {
            "jsonl_mib": round((big / "train.jsonl").stat().st_size / MIB),
            "records": count,
            "redaction": args.redact_all,
            "workers": CPUS,
            "seconds": round(seconds, 1),
            "records_per_second": round(count / seconds, 1),
            "train": report["train"],
        } | memory.as_dict()
        print(f"streaming: {results['streaming']}", flush=True)
    results["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
