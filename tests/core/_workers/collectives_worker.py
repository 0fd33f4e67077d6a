"""Exercises the Accelerator's collective helpers on every rank and writes what each rank saw."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ember import Accelerator


def main() -> None:
    out = Path(sys.argv[1])
    acc = Accelerator(cpu=True, verbose=False)
    r, w = acc.process_index, acc.num_processes
    res: dict[str, object] = {"rank": r, "world": w}
    res["reduce_sum"] = acc.reduce(torch.tensor([float(r + 1)]), "sum").tolist()
    res["reduce_mean"] = acc.reduce(torch.tensor([float(r + 1)]), "mean").tolist()
    res["reduce_max"] = acc.reduce(torch.tensor([float(r + 1)]), "max").tolist()
    res["gather_nested"] = {k: v.tolist() for k, v in acc.gather({"a": torch.tensor([r]), "b": torch.tensor([[r, r]])}).items()}
    res["gather_uneven"] = acc.gather(torch.arange(r + 1)).tolist()
    res["pad"] = acc.pad_across_processes(torch.ones(r + 1), pad_index=-1).tolist()
    res["pad_first"] = acc.pad_across_processes(torch.ones(r + 1), pad_index=-1, pad_first=True).tolist()
    res["broadcast_tensor"] = acc.broadcast(torch.tensor([float(r * 10)]), from_process=w - 1).tolist()
    res["broadcast_object"] = acc.broadcast({"from": r}, from_process=0)
    with acc.split_between_processes(list(range(5))) as part:
        res["split_list"] = part
    with acc.split_between_processes({"x": list("abcde")}, apply_padding=True) as part:
        res["split_dict_padded"] = part
    with acc.split_between_processes(torch.arange(6)) as part:
        res["split_tensor"] = part.tolist()
    # main_process_first: rank 0 writes a marker; the others must see it when their block runs
    marker = out / "marker"
    with acc.main_process_first():
        if acc.is_main_process:
            time.sleep(0.5)
            marker.write_text("written by rank 0")
        res["marker_seen"] = marker.exists()
    acc.wait_for_everyone()
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, 0.5)
    model = acc.prepare(model)
    path = acc.save_model(model, out / "saved")
    res["save_model"] = str(path)
    (out / f"rank{r}.json").write_text(json.dumps(res))
    acc.end_training()


if __name__ == "__main__":
    main()
