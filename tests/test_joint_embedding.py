"""BYOL, SimSiam, Barlow Twins, VICReg: each loss (value and gradients) against a direct transcription of its
paper's formula; BYOL's EMA target takes no gradient and follows the cosine schedule over the whole run; one
BatchNorm per projector layer; a few epochs on digits lower the loss without collapse; resume is exact (the EMA
target and its schedule included). Their 2-process tests are in test_distributed_joint.py."""
import json
import math

import pytest
import torch

from selfsup import Config, pretrain
from selfsup.data import image_spec
from selfsup.losses import barlow_twins, byol_loss, negative_cosine, vicreg
from selfsup.methods import get_method
from selfsup.train.optim import build_optimizer

SPEC = image_spec((1, 8, 8), [0.5], [0.25])
TINY = {"byol": dict(proj_hidden=64, proj_dim=32, pred_hidden=64),
        "simsiam": dict(proj_hidden=64, proj_dim=64, pred_hidden=16),
        "barlow_twins": dict(proj_hidden=64, proj_dim=64),
        "vicreg": dict(proj_hidden=64, proj_dim=64)}


def pair(n=24, d=6, seed=0):
    """Two correlated b x d views as leaves, and detached copies for the transcription."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    z1, z2 = (a + 0.3 * b).requires_grad_(True), (a - 0.3 * b).requires_grad_(True)
    return z1, z2, z1.detach().clone().requires_grad_(True), z2.detach().clone().requires_grad_(True)


def assert_grads_match(ours, ref, *pairs_of_leaves):
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for mine, theirs in pairs_of_leaves:
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6)


# --- the losses against their papers' formulas, written out term by term -------------------------------------

def test_byol_loss_is_the_normalised_squared_error_and_gives_the_target_no_gradient():
    p, z, p_ref, z_ref = pair()
    # Grill et al. 2020, eq. 2: || q/||q|| - z'/||z'|| ||^2, averaged over the batch; z' a constant.
    qn = p_ref / p_ref.norm(dim=1, keepdim=True)
    zn = z_ref.detach() / z_ref.detach().norm(dim=1, keepdim=True)
    ref = ((qn - zn) ** 2).sum(dim=1).mean()
    assert_grads_match(byol_loss(p, z), ref, (p, p_ref))
    assert z.grad is None  # the target takes no gradient even when its tensor requires one
    assert float(byol_loss(z, z).detach()) == pytest.approx(0.0, abs=1e-6)


def test_simsiam_loss_is_the_negative_cosine_with_a_stop_gradient():
    p, z, p_ref, z_ref = pair(seed=1)
    # Chen & He 2021, eq. 1: D(p, z) = - p/||p|| . z/||z||, with stopgrad(z) (eq. 3).
    ref = -torch.stack([p_ref[i] @ z_ref[i].detach() / (p_ref[i].norm() * z_ref[i].detach().norm())
                        for i in range(p_ref.shape[0])]).mean()
    assert_grads_match(negative_cosine(p, z), ref, (p, p_ref))
    assert z.grad is None


def barlow_reference(za, zb, lambd):
    """Zbontar et al. 2021, eq. 1 and 2, with each column centred over the batch."""
    za, zb = za - za.mean(0), zb - zb.mean(0)
    d = za.shape[1]
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = (za[:, i] * zb[:, j]).sum() / (za[:, i].square().sum().sqrt() * zb[:, j].square().sum().sqrt())
            loss = loss + ((1 - c) ** 2 if i == j else lambd * c ** 2)
    return loss


def test_barlow_twins_loss_matches_the_cross_correlation_formula():
    z1, z2, r1, r2 = pair(seed=2)
    assert_grads_match(barlow_twins(z1, z2, lambd=0.0051, scale=1.0, eps=0.0), barlow_reference(r1, r2, 0.0051),
                       (z1, r1), (z2, r2))
    # the defaults: BatchNorm's eps 1e-5 moves C by about eps / var (1e-4 of this small loss); `scale` multiplies it
    torch.testing.assert_close(barlow_twins(z1, z2, scale=0.1), 0.1 * barlow_reference(r1, r2, 0.0051), rtol=1e-3,
                               atol=0)


def vicreg_reference(za, zb, lam, mu, nu):
    """Bardes et al. 2022, eq. 1-6; s as the reference code's mean over rows and dimensions."""
    n, d = za.shape

    def v(z):  # eq. 1: hinge on the std of each dimension, gamma 1, eps 1e-4, unbiased variance
        return sum(torch.relu(1 - torch.sqrt(((z[:, j] - z[:, j].mean()) ** 2).sum() / (n - 1) + 1e-4))
                   for j in range(d)) / d

    def c(z):  # eq. 3-4: squared off-diagonal covariances over d
        zc = z - z.mean(0)
        return sum(((zc[:, i] * zc[:, j]).sum() / (n - 1)) ** 2 for i in range(d) for j in range(d) if i != j) / d

    s = sum(((za[k] - zb[k]) ** 2).sum() for k in range(n)) / (n * d)
    return lam * s + mu * (v(za) + v(zb)) + nu * (c(za) + c(zb))


@pytest.mark.parametrize("scale", [0.3, 3.0])  # below 1 the variance hinge is active, above it is not
def test_vicreg_loss_matches_the_variance_invariance_covariance_formula(scale):
    z1, z2, r1, r2 = pair(seed=3)
    with torch.no_grad():
        for z in (z1, z2, r1, r2):
            z.mul_(scale)
    loss, terms = vicreg(z1, z2, 25.0, 25.0, 1.0)
    assert_grads_match(loss, vicreg_reference(r1, r2, 25.0, 25.0, 1.0), (z1, r1), (z2, r2))
    assert (terms["variance"] > 0) == (scale < 1)
    assert set(terms) == {"invariance", "variance", "covariance"}


def test_the_papers_defaults_are_the_methods_defaults():
    hp = {n: get_method(n).Hparams() for n in TINY}
    assert (hp["byol"].proj_hidden, hp["byol"].proj_dim, hp["byol"].pred_hidden, hp["byol"].momentum) == \
        (4096, 256, 4096, 0.99)
    assert (hp["simsiam"].proj_dim, hp["simsiam"].pred_hidden) == (2048, 512)
    assert (hp["barlow_twins"].lambd, hp["barlow_twins"].scale_loss) == (0.0051, 0.1)
    assert (hp["vicreg"].sim_coeff, hp["vicreg"].std_coeff, hp["vicreg"].cov_coeff) == (25.0, 25.0, 1.0)
    assert all(get_method(n).sync_bn for n in TINY)  # global BatchNorm under torchrun, as every reference


# --- the models ---------------------------------------------------------------------------------------------

def build(name):
    torch.manual_seed(0)
    cls = get_method(name)
    return cls(SPEC, cls.Hparams(**TINY[name]), "small_cnn")


@pytest.mark.parametrize("name,projector_bns", [("byol", 1), ("simsiam", 3), ("barlow_twins", 2), ("vicreg", 2)])
def test_every_projector_layer_has_a_batchnorm_of_its_own(name, projector_bns):
    m = build(name)
    bns = [mod for _, mod in m.named_modules(remove_duplicate=False) if isinstance(mod, torch.nn.BatchNorm1d)]
    assert len({id(b) for b in bns}) == len(bns)  # none shared between layers (lightly #1729)
    assert sum(isinstance(mod, torch.nn.BatchNorm1d) for mod in m.projector.modules()) == projector_bns


def test_byol_target_takes_no_gradient_and_moves_by_the_cosine_schedule():
    m = build("byol")
    target = dict(m.target.net.named_parameters())
    assert all(not p.requires_grad for p in target.values())
    online = dict(torch.nn.Sequential(m.backbone, m.projector).named_parameters())
    assert all(target[n].data_ptr() != p.data_ptr() for n, p in online.items())  # a copy, not the same tensors
    opt = build_optimizer("sgd", m, lr=0.5, weight_decay=0.0)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for p in target.values())  # the optimizer never sees the target
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    total = 21
    for step, expected in ((0, 0.99), (10, 0.995), (20, 1.0)):  # 1 - 0.01 (cos(pi k / K) + 1) / 2, K = 20
        before = {n: p.detach().clone() for n, p in target.items()}
        loss, _ = m(m.make_batch(x, torch.Generator().manual_seed(step)))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in target.values())
        opt.step()
        m.on_step_end(step, total)
        assert float(m.target.momentum) == pytest.approx(expected, abs=1e-12)
        for n, p in target.items():  # teacher <- m teacher + (1 - m) student, with the student after the step
            torch.testing.assert_close(p, expected * before[n] + (1 - expected) * online[n].detach())
    assert int(m.target.updates) == 3


# --- training on digits, and exact resume -------------------------------------------------------------------

def config(name, out):
    """2 epochs of 9 steps, no warmup (it would take both epochs); SimSiam at solo-learn's CIFAR lr 0.5 (its paper's
    0.03 per 256 moves the loss too little in 18 steps to test)."""
    lr = {"simsiam": 0.5}.get(name)
    return Config(method=name, data="digits", out=str(out), device="cpu", epochs=2, batch_size=128, knn_every=0,
                  threads=1, warmup_epochs=0, lr=lr, method_args=TINY[name])


@pytest.mark.parametrize("name", list(TINY))
def test_a_few_epochs_on_digits_lower_the_loss_without_collapse_and_resume_exactly(tmp_path, name,
                                                                                    resumed_equals_full):
    full = pretrain(config(name, tmp_path / "full"), progress=False)
    recs = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs]
    assert losses[-1] < losses[0] - 0.02 * max(1.0, abs(losses[0])), losses  # SimSiam's loss lies in [-1, 1]
    d = TINY[name]["proj_dim"]
    # Not collapsed: the normalised embeddings' batch std stays near 1/sqrt(d) (SimSiam sec. 4.1), not 0.
    assert all(r["logs"]["z_std"] > 0.5 / math.sqrt(d) for r in recs), [r["logs"]["z_std"] for r in recs]

    mid, end = resumed_equals_full(config(name, tmp_path / "resumed"), full, losses)  # EMA target, buffers included
    if name == "byol":  # the schedule spans the whole run: after epoch 1 of 2 it is not yet at 1 (solo-learn #247)
        steps = end["config"]["steps"]
        k = int(mid["model"]["target.updates"])
        assert k == steps // 2 and int(end["model"]["target.updates"]) == steps
        assert float(mid["model"]["target.momentum"]) == pytest.approx(
            1 - 0.01 * (math.cos(math.pi * (k - 1) / (steps - 1)) + 1) / 2)
        assert float(mid["model"]["target.momentum"]) < 0.999 and float(end["model"]["target.momentum"]) == 1.0
