"""Tests for selfsup.evaluate: kNN, linear probe, feature extraction, fine-tuning, subsets and the report."""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
import torch
from torch import nn
from sklearn.datasets import load_digits
from sklearn.neighbors import NearestNeighbors

from selfsup.data import image_spec
from selfsup.models import Encoder
from selfsup.evaluate import (class_balanced_subset, evaluate_encoder, extract_features, finetune, format_markdown,
                              knn_accuracy, knn_predict, linear_probe)

CPU = torch.device("cpu")
MEAN, STD = (0.5,), (0.25,)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems: one intra-op thread is fastest and robust to a busy machine (2 threads can thrash)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    """sklearn digits as 1x8x8 uint8 images (0..16 scaled to 0..255), fixed 75/25 split."""
    d = load_digits()
    x = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n = int(0.75 * len(y))
    return x[:n], y[:n], x[n:], y[n:]


class TinyCNN(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.feature_dim = width * 2
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, padding=1, stride=2), nn.BatchNorm2d(width * 2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x):
        return self.net(x)


def make_cnn(seed: int = 0) -> Encoder:
    """A TinyCNN behind the Encoder that normalises raw uint8 digits with MEAN and STD."""
    torch.manual_seed(seed)
    return Encoder(TinyCNN(), image_spec((1, 8, 8), MEAN, STD))


# ----------------------------------------------------------------------------------------------------- kNN
def reference_knn(train_f, train_y, test_f, num_classes, k, temperature):
    """Independent brute force: sklearn cosine neighbours + explicit Python vote loops."""
    tr, te = train_f.double().numpy(), test_f.double().numpy()
    k = min(k, len(tr))
    nn_ = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(tr)
    dist, ind = nn_.kneighbors(te)
    preds = []
    for i in range(len(te)):
        votes = [0.0] * num_classes
        for d, j in zip(dist[i], ind[i]):
            votes[int(train_y[j])] += math.exp((1.0 - d) / temperature)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


@pytest.mark.parametrize("k,temperature,n_train", [(5, 0.1, 50), (20, 0.07, 60), (1, 0.5, 30), (200, 0.1, 40)])
def test_knn_matches_bruteforce(k, temperature, n_train):
    g = torch.Generator().manual_seed(k + n_train)
    train_f = torch.randn(n_train, 8, generator=g)
    train_y = torch.randint(0, 4, (n_train,), generator=g)
    test_f = torch.randn(37, 8, generator=g)
    pred = knn_predict(train_f, train_y, test_f, 4, k=k, temperature=temperature, chunk_size=10)
    ref = reference_knn(train_f, train_y, test_f, 4, k, temperature)
    assert pred.shape == (37,)
    assert (pred.numpy() == ref).all()


def test_knn_k_larger_than_bank_and_accuracy():
    train_f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    train_y = torch.tensor([0, 0, 1])
    test_f = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert knn_predict(train_f, train_y, test_f, 2, k=1000, temperature=0.01).tolist() == [0, 1]
    assert knn_accuracy(train_f, train_y, test_f, torch.tensor([0, 0]), 2, k=1000, temperature=0.01) == 0.5


def test_knn_temperature_changes_prediction():
    # One very close neighbour of class 1 against two mediocre neighbours of class 0.
    train_f = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    train_y = torch.tensor([1, 0, 0])
    test_f = torch.tensor([[1.0, 0.0]])
    # T large: votes ~equal, the two class-0 neighbours win; T small: the closest neighbour dominates.
    assert knn_predict(train_f, train_y, test_f, 2, k=3, temperature=10.0).item() == 0
    assert knn_predict(train_f, train_y, test_f, 2, k=3, temperature=0.1).item() == 1
    # Tiny temperature must not overflow.
    assert knn_predict(train_f, train_y, test_f, 2, k=3, temperature=1e-4).item() == 1


# ----------------------------------------------------------------------------------------------- linear
def test_linear_probe_digits_pixels(digits):
    xtr, ytr, xte, yte = digits
    ftr, fte = xtr.flatten(1).float() / 255, xte.flatten(1).float() / 255
    acc = linear_probe(ftr, ytr, fte, yte, 10)
    assert acc >= 0.9
    assert linear_probe(ftr, ytr, fte, yte, 10) == acc  # deterministic


def test_linear_probe_standardises_with_training_features_only(digits):
    # Appending far-away test rows (label -1: never predicted) must not change a single prediction on the
    # others: with statistics taken over train + test, the offsets would squash every training feature.
    xtr, ytr, xte, yte = digits
    ftr, fte = xtr.flatten(1).float() / 255, xte.flatten(1).float() / 255
    acc = linear_probe(ftr, ytr, fte, yte, 10)
    far = torch.cat([fte, fte + 1000.0])
    labels = torch.cat([yte, torch.full_like(yte, -1)])
    assert linear_probe(ftr, ytr, far, labels, 10) == pytest.approx(acc / 2, abs=1e-9)


@pytest.mark.parametrize("l2", [1.0, 1e-2, 1e-4])
def test_logistic_regression_matches_scikit_learn(digits, l2):
    # The oracle: scikit-learn's lbfgs logistic regression minimises C * sum CE + |W|^2 / 2, i.e. our
    # mean CE + l2 / 2 |W|^2 with C = 1 / (n * l2), on the same standardised features.
    from sklearn.linear_model import LogisticRegression

    from selfsup.evaluate.linear import fit_linear

    xtr, ytr, _, _ = digits
    f = xtr.flatten(1).float() / 255
    ours = fit_linear(f, ytr, 10, l2=l2, tol=1e-6)  # to the float32 floor: the same optimum, closely
    x = ((f - ours.mean) / ours.std).numpy()
    ref = LogisticRegression(C=1 / (len(ytr) * l2), tol=1e-10, max_iter=20000).fit(x, ytr.numpy())
    w = torch.tensor(ref.coef_, dtype=torch.float32)
    assert (ours.weight - w).abs().max() <= 2e-3 * w.abs().max()


def test_tuning_never_looks_at_the_test_split(digits):
    from selfsup.evaluate.tuning import knn_both, linear_tuned

    xtr, ytr, xte, yte = digits
    ftr, fte = xtr.flatten(1).float() / 255, xte.flatten(1).float() / 255
    a_knn, a_lin = knn_both(ftr, ytr, fte, yte, 10), linear_tuned(ftr, ytr, fte, yte, 10)
    g = torch.Generator().manual_seed(0)
    noise_f, noise_y = torch.rand(fte.shape, generator=g), torch.randint(0, 10, yte.shape, generator=g)
    b_knn, b_lin = knn_both(ftr, ytr, noise_f, noise_y, 10), linear_tuned(ftr, ytr, noise_f, noise_y, 10)
    assert (a_knn["knn_k"], a_lin["linear_l2"]) == (b_knn["knn_k"], b_lin["linear_l2"])  # chosen on validation
    assert a_knn["knn_tuned"] >= a_knn["knn"] - 0.01 and a_knn["knn_tuned"] > 0.95
    smallest = int(torch.bincount(ytr).min())
    assert a_knn["knn_k_fixed"] == min(200, smallest) and a_knn["knn_k"] < 50  # pixels want few neighbours


def test_linear_probe_random_labels_near_chance(digits):
    xtr, ytr, xte, yte = digits
    g = torch.Generator().manual_seed(1)
    rtr, rte = torch.randint(0, 10, ytr.shape, generator=g), torch.randint(0, 10, yte.shape, generator=g)
    acc = linear_probe(xtr.flatten(1).float() / 255, rtr, xte.flatten(1).float() / 255, rte, 10)
    assert acc < 0.2


# --------------------------------------------------------------------------------------------- features
def test_extract_features_eval_mode_and_no_side_effects(digits):
    xtr = digits[0][:300]
    model = make_cnn()
    model.train()
    for _ in range(3):  # give BN non-trivial running stats
        model(torch.randn(64, 1, 8, 8) * 2 + 1)
    bn_before = {k: v.clone() for k, v in model.state_dict().items()}

    f = extract_features(model, xtr, CPU, batch_size=64)
    assert model.training  # mode restored
    assert f.dtype == torch.float32 and f.shape == (300, model.feature_dim)
    assert not f.requires_grad and f.grad_fn is None
    for k, v in model.state_dict().items():  # running stats (and num_batches_tracked) unchanged
        assert torch.equal(v, bn_before[k]), k

    ref_model = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref = ref_model.backbone((xtr.float() / 255 - 0.5) / 0.25)  # normalised by hand: the Encoder's job
        batch_stats = copy.deepcopy(model).train()(xtr)
    assert torch.allclose(f, ref, atol=1e-5)
    assert not torch.allclose(f, batch_stats, atol=1e-3)  # the check would catch batch statistics

    model.eval()
    extract_features(model, xtr[:10], CPU)
    assert not model.training


# --------------------------------------------------------------------------------------------- finetune
def test_finetune_learns_and_leaves_backbone_unchanged(digits):
    xtr, ytr, xte, yte = digits
    model = make_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc = finetune(model, xtr, ytr, xte, yte, 10, CPU, epochs=30, batch_size=64, lr=0.05,
                   max_steps=300)
    assert acc >= 0.8
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_finetune_uses_augment_and_max_steps(digits):
    xtr, ytr, xte, yte = digits
    calls = []

    def augment(xb, gen):
        calls.append(xb.shape[0])
        assert xb.dtype == torch.uint8 and isinstance(gen, torch.Generator)
        return xb.float() / 255  # what the Encoder takes: floats in [0, 1]

    acc = finetune(make_cnn(), xtr, ytr, xte[:50], yte[:50], 10, CPU, augment=augment, epochs=5,
                   batch_size=32, max_steps=7)
    assert len(calls) == 7 and 0.0 <= acc <= 1.0


def test_lp_ft_starts_where_the_linear_probe_ends(digits):
    from selfsup.evaluate.linear import fit_linear

    xtr, ytr, xte, yte = digits
    enc = make_cnn(seed=1)  # untrained: its BatchNorm still holds the initial statistics
    ref = copy.deepcopy(enc)
    torch.optim.swa_utils.update_bn([xtr], ref)
    probe = fit_linear(extract_features(ref, xtr, CPU), ytr, 10, 1e-3)
    start = finetune(enc, xtr, ytr, xte, yte, 10, CPU, lr=1e-9, max_steps=1, probe_l2=1e-3)
    fresh = finetune(enc, xtr, ytr, xte, yte, 10, CPU, lr=1e-9, max_steps=1, probe_l2=None)
    assert start == pytest.approx(probe.accuracy(extract_features(ref, xte, CPU), yte), abs=0.02)
    assert start > 0.8 and fresh < 0.3  # one (vanishing) step: the probe's accuracy, against chance
    # A probe fitted on the initial BatchNorm statistics would not fit the training-mode network: 0.90 here
    # instead of 0.98 after 60 real steps (and a collapse on Fashion-MNIST).
    assert finetune(enc, xtr, ytr, xte, yte, 10, CPU, lr=0.03, max_steps=60, probe_l2=1e-3) > 0.95


# ---------------------------------------------------------------------------------------------- subsets
def test_class_balanced_subset():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 7)
    idx = class_balanced_subset(labels, 0.1, seed=0)
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts == [10, 5, 1]  # max(1, round(0.7)) = 1
    assert torch.equal(idx, idx.sort().values) and idx.unique().numel() == idx.numel()
    assert torch.equal(idx, class_balanced_subset(labels, 0.1, seed=0))
    assert not torch.equal(idx, class_balanced_subset(labels, 0.1, seed=1))
    assert torch.equal(class_balanced_subset(labels, 1.0), torch.arange(len(labels)))
    assert torch.bincount(labels[class_balanced_subset(labels, 0.001)]).tolist() == [1, 1, 1]


# ----------------------------------------------------------------------------------------------- report
def test_evaluate_encoder_digits(digits, monkeypatch):
    from selfsup.evaluate import report

    xtr, ytr, xte, yte = digits
    seen = []  # (protocol, number of training labels it was given)
    for name in ("knn_both", "linear_tuned", "finetune"):
        real = getattr(report, name)
        monkeypatch.setattr(report, name, lambda *a, _real=real, _name=name, **k: (
            seen.append((_name, len(a[1] if _name != "finetune" else a[2]))), _real(*a, **k))[1])
    model = make_cnn(seed=1)
    t0 = time.perf_counter()
    res = evaluate_encoder(model, lambda: make_cnn(seed=2), xtr, ytr, xte, yte, 10, CPU,
                           name="my-ssl", fractions=(0.1, 1.0), k=20, finetune_epochs=2, finetune_max_steps=30,
                           progress=False)
    elapsed = time.perf_counter() - t0
    print(f"evaluate_encoder on digits: {elapsed:.1f}s")
    assert res["splits"] == {"train": len(ytr), "test": len(yte)}
    assert res["num_classes"] == 10 and res["k"] == 20 and res["temperature"] == 0.1
    assert res["seconds"] > 0
    rows = {(r["features"], r["fraction"]): r for r in res["results"]}
    assert set(rows) == {(n, f) for n in ("my-ssl", "random init", "raw pixels") for f in (0.1, 1.0)}
    for (n, f), r in rows.items():
        assert r["labels"] == len(class_balanced_subset(ytr, f))
        for p in ("knn", "linear"):
            assert 0.0 <= r[p] <= 1.0
        assert (r["finetune"] is None) == (n == "raw pixels")
    assert rows[("raw pixels", 1.0)]["linear"] > 0.9
    sizes = {f: len(class_balanced_subset(ytr, f)) for f in (0.1, 1.0)}
    assert sorted(set(seen)) == sorted({(p, sizes[f]) for p in ("knn_both", "linear_tuned", "finetune")
                                        for f in (0.1, 1.0)})  # each probe saw exactly its label subset
    md = format_markdown(res)
    for n in ("my-ssl", "random init", "raw pixels"):
        assert n in md
    assert "**" in md and "—" in md and "| features | labels | kNN k=200 | kNN tuned | linear | fine-tune |" in md
    assert f"10% ({len(class_balanced_subset(ytr, 0.1))})" in md

    only = evaluate_encoder(model, lambda: make_cnn(seed=2), xtr, ytr, xte, yte, 10, CPU,
                            fractions=(1.0,), protocols=("knn",), baselines=False, progress=False)
    assert [r["features"] for r in only["results"]] == ["selfsup"]
    assert only["results"][0]["linear"] is None and only["results"][0]["finetune"] is None


def test_format_markdown_bold_best_and_chosen_hyperparameters():
    common = dict(fraction=0.01, labels=600, knn_k_fixed=60, knn_tuned=None, knn_k=None)
    res = {"results": [
        dict(common, features="a", knn=0.5, knn_tuned=0.55, knn_k=5, linear=0.7, linear_l2=0.01, finetune=None),
        dict(common, features="b", knn=0.6, knn_tuned=0.58, knn_k=10, linear=0.65, linear_l2=1.0, finetune=0.9),
    ]}
    md = format_markdown(res)
    assert "| a | 1% (600) | 50.0 (k=60) | 55.0 (k=5) | **70.0** (L2 0.01) | — |" in md
    assert "| b | 1% (600) | **60.0** (k=60) | **58.0** (k=10) | 65.0 (L2 1) | **90.0** |" in md


def test_stratified_holdout_partitions_every_class():
    from selfsup.data.splits import stratified_holdout

    y = torch.arange(10).repeat_interleave(10)
    tr, te = stratified_holdout(y, 0.2, seed=3)
    assert sorted(torch.cat([tr, te]).tolist()) == list(range(100))
    assert torch.bincount(y[te], minlength=10).tolist() == [2] * 10
    assert torch.equal(te, stratified_holdout(y, 0.2, seed=3)[1])


def test_eval_splits_prefers_the_sources_test_split():
    from selfsup.data import Dataset
    from selfsup.data.splits import eval_splits

    y = torch.arange(5).repeat_interleave(10)
    train = Dataset(torch.zeros(50, 1, 4, 4, dtype=torch.uint8), y)
    test = Dataset(torch.ones(7, 1, 4, 4, dtype=torch.uint8), torch.zeros(7, dtype=torch.long))
    tr, te, note = eval_splits(train, test, seed=0)
    assert tr is train and te is test and "own test split" in note
    tr, te, note = eval_splits(train, None, seed=0)
    assert (len(tr), len(te)) == (40, 10) and "holdout" in note
    assert torch.bincount(te.labels, minlength=5).tolist() == [2] * 5


def test_transformers_fine_tune_with_adamw_and_cnns_with_sgd(monkeypatch):
    """The fine-tuning start follows the family the backbone declares: a ViT (like the text encoder) gets AdamW,
    the CNNs SGD, for the pretrained row and the random-init row alike."""
    from selfsup.evaluate import report
    from selfsup.models.backbones import build_backbone

    spec = image_spec((1, 8, 8), [0.5], [0.25])
    seen = {}

    def fake_finetune(enc, *args, optimizer="sgd", lr=None, probe_l2=None, **kw):
        seen.setdefault(optimizer, []).append(lr)
        return 0.5

    monkeypatch.setattr(report, "finetune", fake_finetune)
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(40) % 2
    for name, optimizer in (("vit", "adamw"), ("small_cnn", "sgd")):
        seen.clear()
        enc = Encoder(build_backbone(name, spec), spec)
        evaluate_encoder(enc, lambda: Encoder(build_backbone(name, spec), spec), x, y, x[:10], y[:10], 2, "cpu",
                         fractions=(1.0,), protocols=("finetune",), progress=False)
        assert list(seen) == [optimizer] and len(seen[optimizer]) == 2, (name, seen)


def test_lp_ft_starts_from_a_probe_penalty_within_the_base_grid(monkeypatch):
    """A probe whose L2 search extended past the grid (1e-8) still starts fine-tuning from a penalty inside the
    base grid (1e-5): the range LP-FT's learning rates were validated with."""
    from selfsup.evaluate import report
    from selfsup.evaluate.tuning import L2_GRID
    from selfsup.models.backbones import build_backbone

    spec = image_spec((1, 8, 8), [0.5], [0.25])
    seen = []
    monkeypatch.setattr(report, "linear_tuned", lambda *a, **k: dict(linear=0.5, linear_l2=1e-8))
    monkeypatch.setattr(report, "finetune", lambda *a, probe_l2=None, **k: seen.append(probe_l2) or 0.5)
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(40) % 2
    enc = Encoder(build_backbone("small_cnn", spec), spec)
    evaluate_encoder(enc, lambda: enc, x, y, x[:10], y[:10], 2, "cpu", fractions=(1.0,),
                     protocols=("linear", "finetune"), baselines=False, progress=False)
    assert seen == [min(L2_GRID)]
