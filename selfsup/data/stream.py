"""Where the training loop's batches come from: one interface, two paths, the loop unaware of which.

* InMemory: this process's samples in one uint8 tensor on the device; an epoch is a seeded randperm and a batch
  an index into it (the loop as it always was: same permutation, same batches).
* Streamed: for data larger than the memory budget. The samples (rows of an array, usually memory-mapped, or
  of a sorted row index into it: a holdout is never materialised) are grouped into blocks of `block` consecutive
  rows. Each epoch the blocks are put in a seeded order, the same on every process, and process r of W takes
  the r-th of W equal runs of that order (n // W samples each, as the in-memory shard: the same steps per epoch
  everywhere, no sample on two processes). A process reads its run `window` blocks at a time into a buffer,
  shuffles the samples within it, and cuts batches from it; the next window is read (and, on CUDA, copied from
  pinned memory to the device without blocking) on a background thread while the current one trains. Batches
  are uint8 tensors on the device, like the in-memory ones; views are made from them by the method as before.

The order of both depends only on the seeds of EpochOrder (a function of the run's seed and the epoch, and the
process's rank) and, for Streamed, on its geometry (saved in the checkpoint): a resumed run sees the same
batches as an uninterrupted one.
"""
from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import torch

from .budget import show_size
from .mapped import copy_rows, file_range, prefetch
from .types import Dataset

BLOCK_BYTES = 1 << 20  # a block is at most 1 MiB of consecutive rows: one sequential read
MIN_BLOCKS_PER_WINDOW = 16  # ...and at most 1/16 of a window, so that a window mixes at least 16 places of the data
WINDOW_SHARE = 4  # a window holds at most budget / 4; two are alive at once (the one training, the one read)
# ...and at most 1 GiB: a larger one mixes no better (already thousands of blocks), pins more host memory and
# delays the first step (the first window is read before anything can train)
WINDOW_MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class EpochOrder:
    """The seeds of one epoch's order: `blocks` is the same on every process (the block order, dealt among
    processes); `samples` is this process's own (the in-memory permutation; the shuffle within windows)."""

    blocks: int
    samples: int


class BatchSource:
    """The training loop's batches: `samples` per epoch on this process (steps per epoch = samples // batch)."""

    kind = ""
    samples = 0

    def batches(self, order: EpochOrder, steps: int, batch: int) -> Iterator[torch.Tensor]:
        """Exactly `steps` uint8 batches of `batch` samples, on the device, in the epoch's order."""
        raise NotImplementedError

    def record(self) -> dict:
        """Plain types (metrics.jsonl, the checkpoint): the path, and what a resumed run needs to repeat it."""
        return {"path": self.kind}

    def describe(self) -> str:
        return self.kind


class InMemory(BatchSource):
    """All of this process's samples (`mine`: its shard's indices, None: all) in one tensor on the device."""

    kind = "in memory"

    def __init__(self, data: Dataset, device: torch.device, mine: torch.Tensor | None = None):
        self.data = data.read(mine).to(device)
        self.samples = len(self.data)

    def batches(self, order, steps, batch):
        perm = torch.randperm(self.samples, generator=torch.Generator().manual_seed(order.samples))
        perm = perm.to(self.data.device)
        for i in range(steps):
            yield self.data[perm[i * batch:(i + 1) * batch]]

    def describe(self):
        return f"in memory ({show_size(self.data.numel() * self.data.element_size())} on {self.data.device.type})"


def geometry(row_bytes: int, samples: int, budget: int) -> tuple[int, int]:
    """(rows per block, blocks per window) for a budget: a window of at most budget / WINDOW_SHARE and
    WINDOW_MAX_BYTES (and no more than the samples), blocks of at most BLOCK_BYTES and at most
    1/MIN_BLOCKS_PER_WINDOW of a window."""
    window_bytes = min(budget // WINDOW_SHARE, WINDOW_MAX_BYTES)
    window_rows = max(1, min(samples, window_bytes // max(1, row_bytes)))
    block = max(1, min(BLOCK_BYTES // max(1, row_bytes), window_rows // MIN_BLOCKS_PER_WINDOW))
    return block, max(1, window_rows // block)


class Streamed(BatchSource):
    """Batches streamed from `data` (see the module's docstring) by process `rank` of `world`."""

    kind = "streamed"

    def __init__(self, data: Dataset, device: torch.device, block: int, window: int, rank: int = 0, world: int = 1):
        if device.type == "cuda" and device.index is None:  # the reader thread needs the index (threads start on 0)
            device = torch.device("cuda", torch.cuda.current_device())
        self.x, self.rows, self.device = data.x, data.rows, device
        self.n, self.rank, self.world = len(data), rank, world
        self.samples = self.n // world
        self.block, self.window = int(block), int(window)
        self.span = file_range(self.x)  # the file mapping whose pages are released once copied
        self.slots: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (host, device) buffers, made once

    def record(self):
        return {"path": self.kind, "block": self.block, "window": self.window}

    def describe(self):
        row = self.x[0].numel() * self.x.element_size()
        where = "a memory-mapped file" if self.span else "memory"
        return (f"streamed from {where}: windows of {self.window} blocks x {self.block} rows "
                f"({show_size(self.window * self.block * row)}, two alive), read while the previous one trains")

    def plan(self, order: EpochOrder, need: int) -> list[list[tuple[int, int]]]:
        """The windows of this process's epoch that hold its first `need` samples: lists of (start, end) ranges of
        consecutive samples (a block, or the part of one at the edge of a process's run or a window). A partial
        epoch reads whole windows, so its batches are the first ones of the whole epoch."""
        n, b, size = self.n, self.block, self.block * self.window
        blocks = torch.randperm(math.ceil(n / b), generator=torch.Generator().manual_seed(order.blocks)).tolist()
        first = self.rank * self.samples  # positions in the epoch's order of blocks
        last = first + min(self.samples, math.ceil(need / size) * size)
        windows, current, filled, pos = [], [], 0, 0
        for k in blocks:
            a, e = k * b, min(n, (k + 1) * b)
            lo, hi = max(pos, first), min(pos + e - a, last)
            a, pos = a - pos, pos + e - a
            while lo < hi:
                take = min(hi - lo, size - filled)
                current.append((a + lo, a + lo + take))
                lo, filled = lo + take, filled + take
                if filled == size:
                    windows.append(current)
                    current, filled = [], 0
            if pos >= last:
                break
        return windows + ([current] if current else [])

    def _buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.slots is None:
            cuda = self.device.type == "cuda"
            shape = (self.block * self.window, *self.x.shape[1:])
            self.slots = []
            for _ in range(2):
                host = torch.empty(shape, dtype=self.x.dtype, pin_memory=cuda)
                self.slots.append((host, torch.empty(shape, dtype=self.x.dtype, device=self.device) if cuda else host))
        return self.slots

    def _read(self, windows, seed: int, free: queue.Queue, ready: queue.Queue, stop: threading.Event) -> None:
        """The background thread: fill a free slot with the next window, hand it over with its shuffle."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.set_device(self.device)  # a new thread starts on device 0
        side = torch.cuda.Stream(self.device) if cuda else None
        copied: list = [None, None]  # per slot: the event of its last host -> device copy
        g = torch.Generator().manual_seed(seed)
        try:
            for pieces in windows:
                slot, released = free.get()
                if slot is None or stop.is_set():
                    return
                host, dev = self.slots[slot]
                if copied[slot] is not None:
                    copied[slot].synchronize()  # the host buffer's last copy has left it
                for a, e in pieces:
                    prefetch(self.x, self.span, *self._file_rows(a, e))
                count = 0
                for a, e in pieces:
                    if stop.is_set():
                        return
                    copy_rows(host[count:count + e - a], self.x, self.rows, a, e, self.span)
                    count += e - a
                perm = torch.randperm(count, generator=g)
                event = None
                if cuda:
                    with torch.cuda.stream(side):
                        if released is not None:
                            side.wait_event(released)  # the training stream is done with this device buffer
                        dev[:count].copy_(host[:count], non_blocking=True)
                        event = copied[slot] = torch.cuda.Event()
                        event.record(side)
                ready.put((slot, count, perm, event))
        except BaseException as e:  # handed to the training loop, which raises it
            ready.put(e)

    def _file_rows(self, a: int, e: int) -> tuple[int, int]:
        return (a, e) if self.rows is None else (int(self.rows[a]), int(self.rows[e - 1]) + 1)

    def batches(self, order, steps, batch):
        windows = self.plan(order, steps * batch)
        slots = self._buffers()
        free: queue.Queue = queue.Queue()
        for s in range(len(slots)):
            free.put((s, None))
        ready: queue.Queue = queue.Queue()
        stop = threading.Event()
        # the shuffle within windows: this process's seed, drawn apart from the block order's
        seed = (order.samples * 6364136223846793005 + 1442695040888963407) % (2**63 - 1)
        reader = threading.Thread(target=self._read, args=(windows, seed, free, ready, stop), daemon=True,
                                  name="selfsup-stream")
        reader.start()
        parts, have, made = [], 0, 0
        try:
            for _ in windows:
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                slot, count, perm, event = item
                if event is not None:
                    torch.cuda.current_stream(self.device).wait_event(event)
                window, perm, i = slots[slot][1], perm.to(self.device), 0
                while i < count and made < steps:
                    take = min(batch - have, count - i)
                    parts.append(window[perm[i:i + take]])  # a gather: a new tensor, the window can be refilled
                    have, i = have + take, i + take
                    if have == batch:
                        yield parts[0] if len(parts) == 1 else torch.cat(parts)
                        parts, have, made = [], 0, made + 1
                released = None
                if event is not None:
                    released = torch.cuda.Event()
                    released.record(torch.cuda.current_stream(self.device))
                free.put((slot, released))
        finally:
            stop.set()
            free.put((None, None))
            reader.join()
