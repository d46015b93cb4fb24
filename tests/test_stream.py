"""Data larger than memory: the streamed batch source against the in-memory one, on one process and on two (gloo),
the memory budget that picks between them, and .npy files memory-mapped where they lie (never read whole)."""
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import dist_workers as W
from selfsup import Config, SelfSupError, pretrain
from selfsup.cli import main
from selfsup.data import Dataset, load_data, spec_of
from selfsup.data.budget import parse_size
from selfsup.data.mapped import is_mapped
from selfsup.data.stream import EpochOrder, InMemory, Streamed, geometry
from selfsup.train.checkpoint import load_checkpoint
from selfsup.train.logging import read_jsonl
from selfsup.data.holdout import without_holdout

CPU = torch.device("cpu")


def numbered(n: int) -> Dataset:
    """n samples of shape (2, 1, 1) whose two bytes spell the sample's index."""
    i = torch.arange(n)
    return Dataset(torch.stack([i % 256, i // 256], 1).to(torch.uint8).view(n, 2, 1, 1))


def ids(batch: torch.Tensor) -> list[int]:
    b = batch.view(len(batch), 2).long()
    return (b[:, 0] + 256 * b[:, 1]).tolist()


def epoch_ids(source, epoch: int, steps: int, bs: int) -> list[list[int]]:
    return [ids(b) for b in source.batches(EpochOrder(blocks=100 + epoch, samples=200 + epoch), steps, bs)]


@pytest.mark.parametrize("block,window,bs", [(7, 5, 20), (64, 1, 30), (1, 3, 50), (600, 4, 600)])
def test_a_streamed_epoch_visits_every_sample_exactly_once(block, window, bs):
    source = Streamed(numbered(600), CPU, block, window)
    assert source.samples == 600
    batches = epoch_ids(source, 0, 600 // bs, bs)
    assert len(batches) == 600 // bs and all(len(b) == bs for b in batches)
    assert sorted(sum(batches, [])) == list(range(600))
    # shuffled (not the stored order), a pure function of the epoch's seeds, another order the next epoch
    assert sum(batches, []) != list(range(600))
    assert epoch_ids(source, 0, 600 // bs, bs) == batches
    assert epoch_ids(source, 1, 600 // bs, bs) != batches


def test_a_partial_epoch_gives_exactly_the_steps_asked_without_repeats():
    source = Streamed(numbered(1000), CPU, 16, 4)
    batches = epoch_ids(source, 0, 7, 32)
    flat = sum(batches, [])
    assert len(batches) == 7 and len(flat) == len(set(flat)) == 7 * 32
    assert sum(epoch_ids(source, 0, 31, 32), [])[:7 * 32] == flat  # the start of the whole epoch's order


def test_a_lazy_row_index_streams_only_its_rows(tmp_path):
    np.save(tmp_path / "a.npy", numbered(900).x.numpy()[:, :, 0, 0].reshape(900, 2, 1))  # (N, H=2, W=1)
    full = load_data(str(tmp_path / "a.npy"))
    keep = torch.arange(0, 900, 3)
    part = full.subset(keep, lazy=True)
    assert part.rows is not None and is_mapped(part.x) and len(part) == 300
    seen = sum(epoch_ids(Streamed(part, CPU, 8, 3), 0, 10, 30), [])
    assert sorted(seen) == keep.tolist()
    assert sorted(sum(epoch_ids(InMemory(part, CPU), 0, 10, 30), [])) == keep.tolist()


def test_in_memory_is_the_loops_randperm():
    data = numbered(300)
    got = list(InMemory(data, CPU).batches(EpochOrder(blocks=1, samples=42), 4, 64))
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(42))
    for i, b in enumerate(got):
        assert torch.equal(b, data.x[perm[i * 64:(i + 1) * 64]])


def test_geometry_fits_the_budget():
    block, window = geometry(row_bytes=3 * 64 * 64, samples=10**6, budget=256 << 20)
    assert block * window * 3 * 64 * 64 <= (256 << 20) // 4 and window >= 16
    assert geometry(64, 100, 1) == (1, 1)  # a budget below a row still streams, a row at a time
    block, window = geometry(row_bytes=3 * 224 * 224, samples=10**6, budget=64 << 30)
    assert block * window * 3 * 224 * 224 <= 1 << 30 and block == (1 << 20) // (3 * 224 * 224)


def two_process_epoch(out: Path) -> None:
    """dist_workers case: this process's streamed epoch of 1,003 samples (3 left over), written to out."""
    from selfsup.distributed import rank, world_size

    source = Streamed(numbered(1003), CPU, 13, 4, rank(), world_size())
    steps = source.samples // 25
    torch.save(dict(samples=source.samples, ids=epoch_ids(source, 0, steps, 25)), out / f"rank{rank()}.pt")


def test_two_processes_stream_disjoint_parts_with_the_same_steps(tmp_path):
    W.spawn("test_stream.two_process_epoch", tmp_path / "store", tmp_path)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert got[0]["samples"] == got[1]["samples"] == 501
    assert len(got[0]["ids"]) == len(got[1]["ids"]) == 20
    a, b = (set(sum(g["ids"], [])) for g in got)
    assert len(a) == len(b) == 500 and not a & b
    # the same two parts as one process computing both ranks (the order depends on seed, epoch, rank, world)
    assert sum(epoch_ids(Streamed(numbered(1003), CPU, 13, 4, 1, 2), 0, 20, 25), []) == sum(got[1]["ids"], [])


def two_process_streamed_runs(out: Path, data: Path, labels: Path) -> None:
    """dist_workers case: a 2-process streamed MoCo run, and the same run interrupted after epoch 1 and resumed."""
    class Stop(Exception):
        pass

    def stop(epoch: int) -> None:
        if epoch == 1:
            raise Stop

    pretrain(W.pipeline_config(out / "full", data, labels, memory_budget="2KiB"), progress=False)
    try:
        pretrain(W.pipeline_config(out / "resumed", data, labels, memory_budget="2KiB"), progress=False,
                 on_epoch_end=stop)
    except Stop:
        pass
    pretrain(Config(out=str(out / "resumed")), resume=True, progress=False)


def test_a_two_process_streamed_run_resumes_exactly(tmp_path):
    data, labels = W.small_digits(tmp_path / "data")
    W.spawn("test_stream.two_process_streamed_runs", tmp_path / "store", tmp_path, data, labels)
    full, resumed = (load_checkpoint(tmp_path / n / "checkpoints" / "last.pt") for n in ("full", "resumed"))
    assert full["feed"]["path"] == "streamed" and full["world_size"] == 2 and resumed["epoch"] == 2
    recs = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [(r["data"], r["processes"]) for r in recs] == [("streamed", 2)] * 2
    assert len(set(recs[-1]["weights_sha256"])) == 1  # both ranks hold the same weights
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


# --- whole runs on digits ------------------------------------------------------------------------------------

RUN = dict(method="simclr", batch_size=120, steps=25, knn_every=1, holdout=0, device="cpu", threads=1,
           method_args=dict(proj_hidden=64, proj_dim=16))  # 1,200 samples: 10 steps an epoch, the 3rd partial


@pytest.fixture(scope="module")
def digits_npy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    train = load_data("digits", "train")
    extra = load_data("digits", "test")
    x = torch.cat([train.x, extra.x])[:1200, 0].numpy()
    y = torch.cat([train.labels, extra.labels])[:1200].numpy()
    np.save(folder / "images.npy", x)
    np.save(folder / "labels.npy", y)
    return folder / "images.npy", folder / "labels.npy"


def spy(monkeypatch) -> list[Counter]:
    """Record each epoch's training samples (as a multiset of their bytes) from whichever source feeds the loop."""
    seen: list[Counter] = []

    def wrap(cls):
        real = cls.batches

        def batches(self, order, steps, bs):
            seen.append(Counter())
            for b in real(self, order, steps, bs):
                seen[-1].update(bytes(r.numpy().tobytes()) for r in b)
                yield b

        monkeypatch.setattr(cls, "batches", batches)

    wrap(InMemory)
    wrap(Streamed)
    return seen


@pytest.fixture(scope="module")
def runs(digits_npy, tmp_path_factory):
    """An in-memory run, a streamed one, and a streamed one interrupted after epoch 1 and resumed."""
    images, labels = digits_npy
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, budget in (("memory", "1GiB"), ("streamed", "16KiB")):
        with pytest.MonkeyPatch.context() as mp:
            seen = spy(mp)
            cfg = Config(**RUN, data=str(images), labels=str(labels), out=str(root / name), memory_budget=budget)
            pretrain(cfg, progress=False)
            out[name] = seen

    class Stop(Exception):
        pass

    def stop(epoch):
        if epoch == 1:
            raise Stop

    cfg = Config(**RUN, data=str(images), labels=str(labels), out=str(root / "resumed"), memory_budget="16KiB")
    with pytest.raises(Stop):
        pretrain(cfg, progress=False, on_epoch_end=stop)
    pretrain(Config(out=str(root / "resumed")), resume=True, progress=False)
    return root, out


def test_streamed_and_in_memory_runs_train_on_the_same_samples_each_epoch(runs):
    root, seen = runs
    for name, path in (("memory", "in memory"), ("streamed", "streamed")):  # the path each took, in its records
        assert [r["data"] for r in read_jsonl(root / name / "metrics.jsonl")] == [path] * 3
        assert load_checkpoint(root / name / "checkpoints" / "last.pt")["feed"]["path"] == path
    assert len(seen["memory"]) == len(seen["streamed"]) == 3
    for epoch in (0, 1):  # whole epochs: every sample once, on both paths
        assert seen["memory"][epoch] == seen["streamed"][epoch]
        assert sum(seen["streamed"][epoch].values()) == 1200
    assert sum(seen["streamed"][2].values()) == sum(seen["memory"][2].values()) == 5 * 120  # the partial epoch


def test_streamed_and_in_memory_runs_reach_the_same_knn(runs):
    root, _ = runs
    knn = {n: [r["knn"] for r in read_jsonl(root / n / "metrics.jsonl") if r["event"] == "epoch"][-1]
           for n in ("memory", "streamed")}
    assert knn["memory"] > 0.5 and abs(knn["memory"] - knn["streamed"]) < 0.05, knn


def test_resuming_a_streamed_run_is_exact(runs):
    root, _ = runs
    whole, resumed = (load_checkpoint(root / n / "checkpoints" / "last.pt") for n in ("streamed", "resumed"))
    assert resumed["feed"] == whole["feed"] and whole["feed"]["path"] == "streamed"
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


# --- the budget, and .npy files left where they lie --------------------------------------------------------------

@pytest.mark.parametrize("text,size", [("2GiB", 2 << 30), ("500MB", 500 * 10**6), ("1.5 gb", 1_500_000_000),
                                       ("4096", 4096), ("64KiB", 65536), (" 3 MiB ", 3 << 20)])
def test_memory_budget_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "2 GiBs", "-1GB", "0", "1e9", ""])
def test_bad_memory_budgets_are_one_line_errors(text, capsys):
    with pytest.raises(SelfSupError, match="--memory-budget must be"):
        parse_size(text)
    assert main(["pretrain", "--data", "digits", f"--memory-budget={text}", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfsup: error: --memory-budget must be") and "\n" not in err


def test_memory_budget_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "--memory-budget SIZE" in capsys.readouterr().out


def _resident(path: Path) -> int:
    """Bytes of `path`'s mapped pages resident in this process (from /proc/self/smaps): read and not released."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:  # a mapping's first line: address perms offset dev inode [path]
                inside = head[-1] == str(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


def test_a_npy_is_memory_mapped_and_never_read_whole(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (3000, 64, 64, 3), dtype=np.uint8)  # 37 MB, stored (N, H, W, C)
    np.save(tmp_path / "big.npy", arr)
    del arr
    full = load_data(str(tmp_path / "big.npy"))
    assert is_mapped(full.x) and full.x.shape == (3000, 3, 64, 64)
    train, _ = without_holdout(Config(), full, torch.arange(0, 3000, 5), own_test=False)
    assert train.rows is not None and train.x is full.x and len(train) == 2400

    def whole(*args):
        raise AssertionError("the samples were read into memory")

    monkeypatch.setattr(Dataset, "read", whole)  # neither the statistics nor the stream read the samples whole
    spec = spec_of(train)
    source = Streamed(train, CPU, *geometry(3 * 64 * 64, 2400, 8 << 20))
    for batch in source.batches(EpochOrder(1, 2), 2400 // 100, 100):
        assert batch.shape == (100, 3, 64, 64)
    left = _resident(tmp_path / "big.npy")
    assert left < 1 << 20, f"{left / 2**20:.0f} MiB of the 37 MiB file stayed resident"
    monkeypatch.undo()
    # the statistics are those of the held-in rows
    ref = spec_of(Dataset(torch.from_numpy(np.load(tmp_path / "big.npy")).permute(0, 3, 1, 2)[train.rows]))
    assert spec.mean == pytest.approx(ref.mean) and spec.std == pytest.approx(ref.std)


def test_a_truncated_npy_is_a_one_line_error(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 8, 8), dtype=np.uint8))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[:-7])
    with pytest.raises(SelfSupError, match=r"a\.npy is truncated: 761 bytes, its header says 768"):
        load_data(str(tmp_path / "a.npy"))
