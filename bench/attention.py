"""Packed attention and the chunked loss: time and peak memory of forward+backward.

Packed rows of L tokens (documents of 64-1024 tokens, as chat records pack) through a
small Llama-shaped model (hidden 256, 2 layers, 4 heads of 64), in fp32:

- attention, at L = 1k, 2k, 4k and 8k, a micro batch of 2 rows, vocabulary 2k (so that
  attention, not the head, dominates): the dense (B,1,L,L) document mask with SDPA (the
  old path) against the packed kernel this device selects, both with the chunked loss;
- loss, at L = 1k and 4k, one row, vocabulary 32k: full-vocabulary fp32 logits against
  the chunked cross-entropy, both on packed attention.

The two configurations of a pair are timed interleaved in one process (median of the
repeats), so that other load on the machine falls on both alike. Peak memory is torch's
allocations at the peak of one more step above what was held before it. Prints a table
and the ratios; asserts nothing.

Usage: python bench/attention.py [--lengths 1024 2048 4096 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

LENGTHS = (1024, 2048, 4096, 8192)
LOSS_LENGTHS = (1024, 4096)
HIDDEN, LAYERS, HEADS = 256, 2, 4
ATTENTION_VOCAB, ATTENTION_ROWS = 2048, 2
LOSS_VOCAB, LOSS_ROWS = 32_000, 1
# (attention, loss) of each configuration compared
DENSE, PACKED, FULL = ("dense", "chunked"), ("packed", "chunked"), ("packed", "full")


def document_lengths(total: int) -> list[int]:
    import torch

    generator = torch.Generator().manual_seed(total)
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(int(torch.randint(64, 1025, (1,), generator=generator)))
    lengths[-1] -= sum(lengths) - total
    return [n for n in lengths if n > 0]


def build(length: int, attention: str, loss: str, vocab: int, n_rows: int) -> Any:
    """(model, batch, device, attention path) for one configuration."""
    import torch
    from finetune_trainer.attention import select_attention, use_packed_attention
    from finetune_trainer.batches import collate, to_device
    from finetune_trainer.loss import install_loss_head
    from finetune_trainer.tiny_model import build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(
        vocab, hidden_size=HIDDEN, layers=LAYERS, heads=HEADS, max_positions=length
    ).to(device)
    path = select_attention(device) if attention == "packed" else "dense mask + sdpa"
    if attention == "packed":
        use_packed_attention(model, path)
    if loss == "chunked":
        install_loss_head(model)
    positions = [p for n in document_lengths(length) for p in range(n)]
    rows = []
    for _ in range(n_rows):
        tokens = torch.randint(0, vocab, (length,)).tolist()
        rows.append({"input_ids": tokens, "labels": tokens, "position_ids": positions})
    return model, to_device(collate(rows, 0, torch.float32), device), device, path


def step(model: Any, batch: dict[str, Any], device: Any) -> float:
    """Seconds of one forward+backward."""
    import torch
    from finetune_trainer.batches import forward_sums

    started = time.perf_counter()
    loss_sum, count, _, _ = forward_sums(model, batch)
    (loss_sum / count).backward()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def peak_memory(model: Any, batch: dict[str, Any], device: Any) -> float:
    """MiB allocated at the peak of one forward+backward above what was held before it:
    torch's own allocation records (the profiler's on CPU, where RSS would mostly measure
    the malloc arenas; the caching allocator's peak on CUDA)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        step(model, batch, device)
        return (torch.cuda.max_memory_allocated() - baseline) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step(model, batch, device)
    events = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()  # negative for a free
        peak = max(peak, held)
    return peak / 2**20


def compare(
    length: int, old: tuple[str, str], new: tuple[str, str], repeats: int, vocab: int, rows: int
) -> list[dict[str, Any]]:
    """Median seconds per step of two configurations, interleaved so that other load on
    the machine falls on both alike, and each one's peak memory."""
    built = [build(length, *config, vocab, rows) for config in (old, new)]
    for model, batch, device, _ in built:
        step(model, batch, device)  # warm-up
    seconds: list[list[float]] = [[], []]
    for _ in range(repeats):
        for i, (model, batch, device, _) in enumerate(built):
            seconds[i].append(step(model, batch, device))
    results = []
    for config, (model, batch, device, path), times in zip((old, new), built, seconds, strict=True):
        results.append({
            "length": length, "attention": path, "loss": config[1], "device": str(device),
            "seconds": sorted(times)[len(times) // 2],
            "peak_mib": peak_memory(model, batch, device),
        })  # fmt: skip
    return results


def print_table(title: str, rows: list[dict[str, Any]], key: str) -> None:
    print(f"\n{title}")
    print(f"{'L':>6}  {key:<28} {'s/step':>8} {'peak MiB':>10}")
    for r in rows:
        print(f"{r['length']:>6}  {r[key]:<28} {r['seconds']:>8.3f} {r['peak_mib']:>10.0f}")


def ratios(old: list[dict[str, Any]], new: list[dict[str, Any]], what: str) -> None:
    for a, b in zip(old, new, strict=True):
        print(
            f"  L={a['length']:>5}: {what} time {a['seconds'] / b['seconds']:.2f}x faster, "
            f"peak memory {a['peak_mib'] / max(b['peak_mib'], 1):.1f}x lower"
        )


def growth(rows: list[dict[str, Any]]) -> str:
    """Peak memory per 1k tokens at each L: flat means linear growth."""
    return ", ".join(f"{r['peak_mib'] / (r['length'] / 1024):.0f}" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--loss-lengths", type=int, nargs="+", default=list(LOSS_LENGTHS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = (args.repeats, ATTENTION_VOCAB, ATTENTION_ROWS)
    pairs = [compare(n, DENSE, PACKED, *settings) for n in args.lengths]
    dense, packed = [p[0] for p in pairs], [p[1] for p in pairs]
    print(f"forward+backward, device {packed[0]['device']}, fp32, hidden {HIDDEN}, "
          f"{LAYERS} layers, {HEADS} heads; seconds: median of {args.repeats}, the two "
          "paths interleaved")  # fmt: skip
    title = f"attention ({ATTENTION_ROWS} rows, vocabulary {ATTENTION_VOCAB}, chunked loss)"
    print_table(title, [*dense, *packed], "attention")
    ratios(dense, packed, "packed vs dense mask:")
    print(f"  peak MiB per 1k tokens, dense mask: {growth(dense)}")
    print(f"  peak MiB per 1k tokens, packed:     {growth(packed)}")
    settings = (args.repeats, LOSS_VOCAB, LOSS_ROWS)
    pairs = [compare(n, FULL, PACKED, *settings) for n in args.loss_lengths]
    full, chunked = [p[0] for p in pairs], [p[1] for p in pairs]
    title = f"loss ({LOSS_ROWS} row, vocabulary {LOSS_VOCAB}, packed attention)"
    print_table(title, [*full, *chunked], "loss")
    ratios(full, chunked, "chunked vs full logits:")


if __name__ == "__main__":
    main()
