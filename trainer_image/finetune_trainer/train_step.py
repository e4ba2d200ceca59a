"""One optimizer step of the SFT objective over a rank's micro batches (DPO's is dpo.py's)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from finetune_trainer.batches import forward_sums
from finetune_trainer.prefetch import HostBatches


def optimizer_step(
    engine: Any, host: HostBatches, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step over this rank's micro batches; returns, as device tensors, the
    global mean token loss and the global non-padding and loss token counts.

    Each micro batch's summed loss is divided by the loss tokens of the whole global batch
    (all micro batches, all ranks), so the step's gradient is that of the true mean token
    loss however unevenly the loss tokens fall. DeepSpeed divides by accumulation steps and
    averages over ranks, which the factor `scale` undoes. Nothing here reads a value back
    from the device: the counts were taken on the host, and the scale stays a tensor.
    """
    batches = host.to(device)
    counts = torch.tensor([host.loss_tokens, host.tokens], dtype=torch.float64).to(device)
    dist.all_reduce(counts)
    world = dist.get_world_size()
    scale = len(batches) * world / counts[0].clamp(min=1.0)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches:
        summed = forward_sums(engine, batch)[0]
        engine.backward(summed * scale.to(summed.dtype))
        engine.step()
        loss_sum += summed.detach().double()
    dist.all_reduce(loss_sum)
    return loss_sum / counts[0].clamp(min=1.0), counts[1], counts[0]
