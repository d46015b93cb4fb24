"""The collapse monitor: effective rank against its formula; a constant embedding is flagged and healthy ones are
not; every run's metrics.jsonl carries the statistics each epoch, logs.png draws them, and a collapsed run prints
the warning."""
import json
import math

import pytest
import torch
from torch import nn

from selfsup import Config, pretrain
from selfsup.data import load_data, spec_of
from selfsup.losses import effective_rank
from selfsup.methods.simclr import SimCLR
from selfsup.models.backbones import build_backbone
from selfsup.models.encoder import Encoder
from selfsup.train.logging import append_jsonl, panel_values, plot_curves
from selfsup.train.monitor import CollapseMonitor, collapse_stats, collapse_warning


def test_effective_rank_is_the_exp_entropy_of_the_normalised_singular_values():
    # rows e1, e1, e1, e2 (already unit): singular values sqrt(3) and 1
    z = torch.tensor([[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]])
    p = torch.tensor([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    assert float(effective_rank(z, eps=0.0)) == pytest.approx(math.exp(-(p * p.log()).sum()), rel=1e-5)
    assert float(effective_rank(torch.eye(5) * 3.0, eps=0.0)) == pytest.approx(5.0, rel=1e-5)  # scale-free
    assert float(effective_rank(torch.ones(7, 4))) == pytest.approx(1.0, abs=1e-3)


class Constant(nn.Module):
    """An encoder that maps every sample to the same vector (a fully collapsed representation)."""

    feature_dim = 16

    def __init__(self):
        super().__init__()
        self.register_buffer("v", torch.randn(16, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return self.v.expand(x.shape[0], -1)


def test_a_constant_embedding_is_flagged_and_healthy_ones_are_not():
    digits = load_data("digits", "train")
    monitor = CollapseMonitor(digits, seed=0, device=torch.device("cpu"))
    assert monitor.x.shape[0] == 512
    const = monitor(Constant())
    assert const["std_mean"] < 1e-6 and const["rank"] == pytest.approx(1.0, abs=1e-2)
    assert "collapsed" in collapse_warning(const)
    g = torch.Generator().manual_seed(1)
    noisy = Constant().v + 1e-3 * torch.randn(512, 16, generator=g)  # a point plus noise of 1e-3 of its norm
    assert collapse_warning(collapse_stats(noisy)) is not None
    random = collapse_stats(torch.randn(512, 64, generator=g))  # healthy: spread over the sphere
    assert random["std_mean"] * 8 == pytest.approx(1.0, abs=0.05) and random["rank"] > 50
    assert collapse_warning(random) is None
    torch.manual_seed(0)  # a freshly initialised CNN is not collapsed either
    cnn = monitor(Encoder(build_backbone("small_cnn", spec_of(digits)), spec_of(digits)))
    assert collapse_warning(cnn) is None and cnn["dim"] == 256 and cnn["samples"] == 512
    two = collapse_stats(torch.randn(512, 2, generator=g) @ torch.randn(2, 64, generator=g))
    assert two["rank"] == pytest.approx(2.0, abs=0.1) and collapse_warning(two) is None  # dimensional, not constant


def run(tmp_path, name):
    return pretrain(Config(method="simclr", data="digits", out=str(tmp_path / name), device="cpu", epochs=2,
                           batch_size=256, knn_every=0, threads=1, method_args=dict(proj_hidden=32, proj_dim=16)),
                    progress=False)


def test_every_epoch_record_carries_the_statistics_and_a_collapsed_run_says_so(tmp_path, capsys, monkeypatch):
    root = run(tmp_path, "healthy")
    recs = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r["collapse"]) for r in recs] == [["dim", "rank", "samples", "std_mean"]] * 2
    assert all(r["collapse"]["rank"] > 10 and r["collapse"]["samples"] == 512 for r in recs)
    assert "collapsed" not in capsys.readouterr().err
    monkeypatch.setattr(SimCLR, "encoder", lambda self: Constant())
    root = run(tmp_path, "collapsed")
    err = capsys.readouterr().err
    assert "epoch 1: warning: the representation has collapsed" in err and "epoch 2: warning" in err
    recs = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert all(r["collapse"]["rank"] < 1.01 for r in recs)


def test_logs_png_draws_the_collapse_panels(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for e in (1, 2):
        append_jsonl(path, dict(event="epoch", epoch=e, loss=1.0, collapse=dict(std_mean=0.05, rank=3.0 * e,
                                                                                 dim=16, samples=512)))
    assert panel_values(json.loads(path.read_text().splitlines()[1])) == {"collapse std_mean": 0.05,
                                                                          "collapse rank": 6.0}
    written = plot_curves(path, tmp_path / "plots")
    assert [p.name for p in written] == ["loss.png", "logs.png"] and written[1].stat().st_size > 2000
