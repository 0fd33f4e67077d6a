"""Accelerate idioms that need 2 processes, written as Accelerate users write them (only the import changed).
Usage: ``idioms_worker.py OUT_DIR``; each rank writes OUT_DIR/rank{r}.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ember import Accelerator
from ember.local_sgd import LocalSGD
from ember.utils import DDPCommunicationHookType, DistributedDataParallelKwargs, DistributedType


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    result: dict[str, object] = {"rank": accelerator.process_index}
    result["multi_cpu"] = accelerator.distributed_type == DistributedType.MULTI_CPU
    result["state"] = [accelerator.state.num_processes, accelerator.state.process_index]

    # early stopping decided on one rank only (Accelerate's by_feature/early_stopping.py)
    if accelerator.process_index == 1:
        accelerator.set_trigger()
    result["trigger"] = [accelerator.check_trigger(), accelerator.check_trigger()]

    # a scheduler prepared in a multi-process run: the notice is printed once (by rank 0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    # LocalSGD (by_feature/local_sgd.py): ranks drift apart between averages, agree after one
    torch.manual_seed(accelerator.process_index)  # different data per rank
    drift = []
    with LocalSGD(accelerator=accelerator, model=model, local_sgd_steps=3, enabled=True) as local_sgd:
        for _ in range(6):
            x = torch.randn(8, 4)
            loss = F.mse_loss(model(x), x.sum(-1, keepdim=True))
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            local_sgd.step()
            w = accelerator.unwrap_model(model).weight.detach()
            gathered = accelerator.gather(w.reshape(1, -1))
            drift.append(bool(torch.equal(gathered[0], gathered[1])))
    result["local_sgd_equal_after_step"] = drift  # equal only at steps 3 and 6 (0-based 2 and 5)

    # a DDP communication hook (by_feature/ddp_comm_hook.py)
    hooked = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(
        comm_hook=DDPCommunicationHookType.FP16)], verbose=False)
    net = torch.nn.Linear(4, 1)
    with torch.no_grad():
        net.weight.fill_(0.5)
    net = hooked.prepare(net)
    hooked.backward(net(torch.full((2, 4), float(hooked.process_index + 1))).sum())
    result["hooked_grad"] = hooked.unwrap_model(net).weight.grad.tolist()
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(result))
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
