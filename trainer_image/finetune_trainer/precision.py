"""Which precision a run trains in: the job's request against what the device computes
natively.

`auto` means bf16 on GPUs that have it (else fp16) and fp32 on CPUs, so a CPU run's numbers
do not depend on which CPU it lands on. An explicit `bf16` is honoured on a CPU with bf16
matrix instructions (Intel AMX or AVX512-BF16), where oneDNN multiplies bf16 several times
faster than fp32; other CPUs would emulate it, slower than fp32, so they train in fp32.
fp16 needs a CUDA GPU (CPUs have no fast fp16 training path, and fp16 needs loss scaling).
"""

from __future__ import annotations

import torch


def bf16_native(*, cuda: bool) -> bool:
    """Whether this process's device multiplies bf16 natively (the GPU's, or the CPU's)."""
    if cuda:
        return bool(torch.cuda.is_bf16_supported())
    # torch names its CPU feature probes privately; a torch without them counts as no.
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_precision(
    requested: str, *, cuda: bool, bf16_supported: bool
) -> tuple[str, str | None]:
    """The precision to train in, and a note when the request cannot be honoured here."""
    if not cuda:
        if requested == "bf16" and bf16_supported:
            return "bf16", None
        if requested == "bf16":
            return "fp32", (
                "precision bf16 on CPU needs bf16 matrix instructions (Intel AMX or "
                "AVX512-BF16), which this CPU lacks; training in fp32"
            )
        note = None if requested in ("auto", "fp32") else (
            f"precision {requested} needs a CUDA GPU; training in fp32 on CPU"
        )  # fmt: skip
        return "fp32", note
    if requested == "auto":
        return ("bf16" if bf16_supported else "fp16"), None
    if requested == "bf16" and not bf16_supported:
        return "fp16", "this GPU has no bf16 support; training in fp16 instead"
    return requested, None
