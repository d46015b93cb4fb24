"""Shared fixtures: small real data (scikit-learn's digits), CPU-only settings, an interrupted run."""
import pytest
import torch

from selfsup import pretrain
from selfsup.data import load_data


@pytest.fixture(scope="session")
def digits():
    """(train, test) Dataset of the 8x8 digits."""
    return load_data("digits", "train"), load_data("digits", "test")


@pytest.fixture(autouse=True)
def _cpu_threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _fast_eval_maps(request, monkeypatch):
    """`selfsup eval` draws plots/ by default, and t-SNE takes seconds a call: tests other than test_plots.py
    draw the map from two principal components instead (every file is still written)."""
    if request.module.__name__ != "test_plots":
        from selfsup.evaluate import plots
        monkeypatch.setattr(plots, "project_2d", plots.pca_2d)


class Interrupted(Exception):
    """Raised after an epoch, as a crash or Ctrl-C would stop a run."""


@pytest.fixture
def pretrain_until():
    """pretrain_until(cfg, epoch): run cfg and stop it right after `epoch` (its checkpoint is on disk)."""

    def run(cfg, epoch: int) -> None:
        def stop(done: int) -> None:
            if done == epoch:
                raise Interrupted

        with pytest.raises(Interrupted):
            pretrain(cfg, progress=False, on_epoch_end=stop)

    return run


@pytest.fixture
def resumed_equals_full(pretrain_until):
    """resumed_equals_full(cfg, full, losses): run cfg stopped after epoch 1, resume it, and assert its weights
    (every buffer: EMA targets, centres, schedules) and its per-epoch losses equal the uninterrupted run in
    `full`; returns the checkpoints (mid, end) for method-specific checks."""
    import json
    from pathlib import Path

    from selfsup import Config
    from selfsup.distributed import state_digest
    from selfsup.train.checkpoint import load_checkpoint

    def run(cfg, full, losses):
        pretrain_until(cfg, 1)
        out = Path(cfg.out)
        mid = load_checkpoint(out / "checkpoints" / "last.pt")
        pretrain(Config(out=str(out)), resume=True, progress=False)
        end = load_checkpoint(Path(full) / "checkpoints" / "last.pt")
        again = load_checkpoint(out / "checkpoints" / "last.pt")
        assert state_digest(again["model"]) == state_digest(end["model"])
        assert [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()] == losses
        return mid, end

    return run
