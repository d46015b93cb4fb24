"""The probes' tuning: the L2 grid extends past a winning edge, the refit continues the validated probe to
convergence, and the random-init baseline's BatchNorm statistics are re-estimated on training images."""
import copy
import math

import pytest
import torch
from torch import nn

from selfsup.data import image_spec
from selfsup.evaluate import tuning
from selfsup.evaluate.features import extract_features, reestimate_batchnorm
from selfsup.evaluate.linear import LinearClassifier, fit_linear, restandardised
from selfsup.models import Encoder, build_backbone


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # many small L-BFGS steps: a second thread only waits on a shared CPU


class FakeFit:
    """Stands in for a fitted probe whose validation accuracy peaks at the penalty `peak`."""

    def __init__(self, l2, init, peak):
        self.l2, self.init, self.peak, self.converged = l2, init, peak, True

    def accuracy(self, f, y):
        return 1.0 - 0.01 * abs(round(math.log10(self.l2)) - round(math.log10(self.peak)))


@pytest.mark.parametrize("peak,tried_beyond,chosen", [
    (1e-3, [], 1e-3),  # an interior winner: the grid as it is
    (1e2, [10.0, 100.0, 1000.0], 100.0),  # the strongest edge wins: extend upwards until the peak is inside
    (1e-7, [1e-6, 1e-7, 1e-8], 1e-7),  # the weakest edge wins: extend downwards
    (1e9, [10.0, 100.0, 1e3, 1e4], 1e4),  # beyond the limit: MAX_EXTEND decades, then the edge
])
def test_l2_grid_extends_a_decade_past_a_winning_edge(monkeypatch, peak, tried_beyond, chosen):
    fits = []

    def fake_fit(f, y, num_classes, l2, max_iter=100, init=None):
        fits.append(FakeFit(l2, init, peak))
        return fits[-1]

    monkeypatch.setattr(tuning, "fit_linear", fake_fit)
    out = tuning.search_l2(None, None, None, None, 10)
    tried = [fit.l2 for fit in fits]
    assert tried[:len(tuning.L2_GRID)] == list(tuning.L2_GRID)
    assert tried[len(tuning.L2_GRID):] == pytest.approx(tried_beyond)
    assert out["l2"] == pytest.approx(chosen) and out["probe"].l2 == out["l2"]
    for fit in fits[1:]:  # each fit warm-starts from its neighbour's solution, a decade away
        assert fit.init is not None and fit.init.l2 in (pytest.approx(fit.l2 * 10), pytest.approx(fit.l2 / 10))


def test_refit_continues_the_validated_probe_to_convergence(digits, monkeypatch):
    train, test = digits
    f, y = train.x.flatten(1).float() / 255, train.labels
    fte = test.x.flatten(1).float() / 255
    calls = []
    real = tuning.fit_linear
    monkeypatch.setattr(tuning, "fit_linear", lambda tf, *a, **k: (calls.append((len(tf), a, k)),
                                                                     real(tf, *a, **k))[1])
    choice = tuning.choose_l2(f, y, 10)
    n_search = len(calls)
    out = tuning.linear_tuned(f, y, fte, test.labels, 10)
    refit_n, refit_args, refit_kwargs = calls[-1]
    assert refit_n == len(y) and refit_args[2] == out["linear_l2"] == choice["l2"]
    init = refit_kwargs["init"]  # the probe that validated at the chosen penalty, the same search replayed
    assert init is not None and torch.equal(init.weight, choice["probe"].weight)
    assert len(calls) == 2 * n_search + 1
    assert out["linear_converged"] and 0 < out["linear_iterations"] <= tuning.REFIT_MAX_ITER
    assert out["linear_l2_tried"] == list(choice["scores"]) and out["linear"] > 0.9
    cold = fit_linear(f, y, 10, out["linear_l2"], max_iter=tuning.REFIT_MAX_ITER)
    assert cold.converged and out["linear_iterations"] < cold.iterations  # the warm start saves iterations
    # the warm start re-expressed in the whole subset's statistics is the very function that validated
    mean, std = (f.mean(0, keepdim=True), f.std(0, unbiased=False, keepdim=True).clamp_min(1.0))
    moved = LinearClassifier(mean, std, *restandardised(init, mean, std))
    assert torch.allclose(moved.logits(fte), init.logits(fte), atol=1e-4)


def test_unconverged_fit_is_reported(digits):
    train, _ = digits
    fit = fit_linear(train.x.flatten(1).float() / 255, train.labels, 10, 1e-5, max_iter=3)
    assert not fit.converged and fit.iterations == 3


def resnet_encoder():
    spec = image_spec((3, 16, 16), [0.5] * 3, [0.25] * 3)
    torch.manual_seed(0)
    return Encoder(build_backbone("resnet18", spec), spec).eval()


def test_random_init_resnet_batchnorm_is_reestimated_on_training_images():
    enc = resnet_encoder()
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=gen)
    norms = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.running_mean.any() and bool((m.running_var == 1).all()) for m in norms)
    identity = extract_features(enc, x, "cpu")
    with torch.no_grad():
        batch_mode = copy.deepcopy(enc).train()(x[:32])
    seen = []
    hook = enc.backbone.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    used = reestimate_batchnorm(enc, x, "cpu", max_samples=32, batch_size=32)
    hook.remove()
    assert used == 32 and sum(len(b) for b in seen) == 32  # a seeded 32 of the 40, in one batch here
    prepared = enc.prepare(x)
    assert all(any(torch.equal(row, p) for p in prepared) for row in seen[0])  # training images only
    # not identity BatchNorm any more: every layer holds statistics of the images it saw
    assert all(m.running_mean.any() and not bool((m.running_var == 1).all()) for m in norms)
    assert not enc.training and all(m.momentum == 0.1 for m in norms)  # modes and momenta restored
    after = extract_features(enc, x[:32], "cpu")
    # eval-mode features now match what the network gives with batch statistics (within 5%); with the initial
    # identity statistics they were 38% larger here (2.5 times on 32 x 32 images)
    ratio = lambda a: (a.norm(dim=1).mean() / batch_mode.norm(dim=1).mean()).item()
    assert ratio(after) == pytest.approx(1.0, abs=0.05) and ratio(identity) > 1.25


def test_evaluate_encoder_reestimates_only_the_random_init_batchnorm(digits, monkeypatch):
    from selfsup.evaluate import report

    class Tiny(nn.Module):
        feature_dim = 8

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten())

        def forward(self, x):
            return self.net(x)

    spec = image_spec((1, 8, 8), [0.3], [0.4])
    train, test = digits
    ours, rand = Encoder(Tiny(), spec), Encoder(Tiny(), spec)
    calls = []
    real = report.reestimate_batchnorm
    monkeypatch.setattr(report, "reestimate_batchnorm", lambda m, x, *a, **k: (calls.append((m, x)),
                                                                                 real(m, x, *a, **k))[1])
    res = report.evaluate_encoder(ours, lambda: rand, train.x, train.labels, test.x, test.labels, 10, "cpu",
                                  fractions=(1.0,), protocols=("knn",), progress=False)
    assert len(calls) == 1 and calls[0][0] is rand and calls[0][1] is train.x  # the training images
    assert res["random_bn_samples"] == len(train.x)
    assert rand.backbone.net[1].running_mean.any() and not ours.backbone.net[1].running_mean.any()
