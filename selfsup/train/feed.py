"""Choosing where a run's batches come from: in memory when this process's samples fit the memory budget,
streamed when they do not (selfsup/data/stream.py); a resumed run keeps the path and geometry it started with."""
from __future__ import annotations

import torch

from ..config import Config
from ..data import Dataset
from ..data.budget import default_budget, parse_size, show_size
from ..data.stream import BatchSource, InMemory, Streamed, geometry
from ..distributed import mean_over_processes, rank, world_size


def open_feed(cfg: Config, train: Dataset, device: torch.device, mine: torch.Tensor | None,
              saved: dict | None = None) -> tuple[BatchSource, str]:
    """(the batch source, a line for the recipe saying which path and why). `mine`: this process's shard for the
    in-memory path; `saved`: the checkpoint's record of the path (a resumed run repeats its batches exactly).

    Every process takes the same path (streamed if any one's samples exceed its budget): the two give
    different steps per epoch under torchrun, and the processes must step together."""
    n = len(train) if mine is None else len(mine)
    row = train.x[0].numel() * train.x.element_size()
    budget = parse_size(cfg.memory_budget) if cfg.memory_budget else default_budget(device)
    if saved is not None:
        stream = saved.get("path") == Streamed.kind
        block, window = (saved["block"], saved["window"]) if stream else (0, 0)
    else:
        over = torch.tensor(float(n * row > budget), device=device)
        stream = bool(mean_over_processes(over).item() > 0) if world_size() > 1 else bool(over.item())
        block, window = geometry(row, len(train) // world_size(), budget)
    source = (Streamed(train, device, block, window, rank(), world_size()) if stream
              else InMemory(train, device, mine))
    why = (f"{show_size(n * row)} of samples {'over' if n * row > budget else 'within'} the memory budget "
           f"{show_size(budget)}" + (" (given)" if cfg.memory_budget else " (half the free memory)")
           + ("; the path this run started on" if saved is not None else ""))
    return source, f"{source.describe()}: {why}"
