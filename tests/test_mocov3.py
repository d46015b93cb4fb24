"""MoCo v3: its loss (value and gradients) against a direct transcription of the paper's formula; the method's
loss is the symmetric sum of it; the heads, temperature and patch embedding follow the backbone as the reference
code's; the momentum encoder takes no gradient and moves on the cosine schedule over the whole run; a few epochs
on digits lower the loss (a CNN and a ViT) and resume exactly. The 2-process test is in test_distributed_joint.py."""
import json
import math

import pytest
import torch

from selfsup import Config, pretrain
from selfsup.config import resolve
from selfsup.data import image_spec
from selfsup.losses import mocov3_logits, mocov3_loss
from selfsup.methods import get_method
from selfsup.methods.mocov3 import MoCoV3
from selfsup.train.optim import build_optimizer

SPEC = image_spec((1, 8, 8), [0.5], [0.25])
TINY = dict(proj_hidden=64, proj_dim=32)


def build(backbone="small_cnn", **kw):
    torch.manual_seed(0)
    return MoCoV3(SPEC, MoCoV3.Hparams(**{**TINY, **kw}), backbone)


def ctr_reference(q, k, tau):
    """Chen, Xie & He 2021, Algorithm 1 / eq. 1, written out: for each query q_i (normalised), -log of
    exp(q_i . k_i / tau) over the sum of exp(q_i . k_j / tau) over every key j of the batch; mean over i; x 2 tau."""
    n = q.shape[0]
    total = 0.0
    for i in range(n):
        qi = q[i] / q[i].norm()
        sims = torch.stack([qi @ (k[j] / k[j].norm()) / tau for j in range(n)])
        total = total - torch.log(torch.exp(sims[i]) / torch.exp(sims).sum())
    return 2 * tau * total / n


@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_loss_value_and_gradient_equal_the_papers_formula_and_keys_take_no_gradient(tau):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    q, k = (a + 0.5 * b).requires_grad_(True), (a - 0.5 * b).requires_grad_(True)
    q_ref = q.detach().clone().requires_grad_(True)
    ours, ref = mocov3_loss(q, k, tau), ctr_reference(q_ref, k.detach(), tau)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.grad, q_ref.grad, rtol=1e-4, atol=1e-7)
    assert k.grad is None  # the keys are constants even when their tensor requires a gradient
    logits, targets = mocov3_logits(q, k, tau)
    assert logits.shape == (12, 12) and targets.tolist() == list(range(12))  # one process: rank 0's columns
    # the value at chance (every similarity equal) is 2 tau ln N, the scale the 2 tau factor keeps
    same = torch.ones(12, 6)
    assert float(mocov3_loss(same, same, tau)) == pytest.approx(2 * tau * math.log(12), rel=1e-6)


def test_the_method_loss_is_the_symmetric_sum_of_the_two_directions():
    m = build()
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    batch = m.make_batch(x, torch.Generator().manual_seed(0))
    loss, logs = m(batch)
    # BatchNorm running statistics moved in the forward above: recompute in the same (train) mode from a copy
    m2 = build()
    q = [m2.predictor(m2.projector(m2.backbone(batch[v]))) for v in ("v1", "v2")]
    with torch.no_grad():
        k = [m2.momentum_encoder(batch[v]) for v in ("v1", "v2")]
    expected = mocov3_loss(q[0], k[1], 1.0) + mocov3_loss(q[1], k[0], 1.0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert set(logs) == {"pos_acc", "z_std"}


def test_the_recipe_follows_the_backbone_as_the_reference_code():
    cnn, vit = build("small_cnn"), build("vit")
    assert (cnn.temperature, vit.temperature) == (1.0, 0.2)  # --moco-t 1.0 (ResNet), .2 (ViT)
    linears = lambda seq: sum(isinstance(mod, torch.nn.Linear) for mod in seq)  # noqa: E731
    assert (linears(cnn.projector), linears(vit.projector)) == (2, 3)  # MoCo_ResNet / MoCo_ViT
    bn = torch.nn.BatchNorm1d
    assert not isinstance(cnn.predictor[-1], bn) and isinstance(vit.predictor[-1], bn)
    assert all(lin.bias is None for m in (cnn, vit) for seq in (m.projector, m.predictor) for lin in seq
               if isinstance(lin, torch.nn.Linear))  # the reference's Linear(..., bias=False) everywhere
    # the ViT's patch embedding is frozen (random patch projection), the CNN's first conv is not
    assert all(not p.requires_grad for p in vit.backbone.patch_embed.parameters())
    assert all(p.requires_grad for p in build("vit", freeze_patch_embed=False).backbone.patch_embed.parameters())
    assert all(p.requires_grad for p in cnn.backbone.parameters())
    assert build("small_cnn", temperature=0.5, proj_layers=3).temperature == 0.5
    # the encoder evaluation uses is the query (base) backbone, not the momentum copy
    assert cnn.encoder().backbone is cnn.backbone
    # defaults: 4096-256 heads, momentum 0.99; LARS 0.3 per 256 for CNNs, AdamW 1.5e-4 per 256 for ViTs
    hp = MoCoV3.Hparams()
    assert (hp.proj_hidden, hp.proj_dim, hp.momentum, hp.temperature) == (4096, 256, 0.99, None)
    assert get_method("moco-v3") is MoCoV3 and MoCoV3.sync_bn
    cfg = resolve(Config(method="mocov3", backbone="vit", optimizer="adamw", batch_size=512), "cpu")
    assert (cfg.lr, cfg.weight_decay) == (pytest.approx(3e-4), 0.1)
    assert resolve(Config(method="mocov3", batch_size=512), "cpu").optimizer == "lars"


def test_momentum_encoder_takes_no_gradient_and_moves_by_the_cosine_schedule():
    m = build()
    target = dict(m.momentum_encoder.net.named_parameters())
    online = dict(torch.nn.Sequential(m.backbone, m.projector).named_parameters())
    assert target.keys() == online.keys()  # backbone + projector, not the predictor
    assert all(not p.requires_grad for p in target.values())
    assert all(target[n].data_ptr() != p.data_ptr() for n, p in online.items())
    opt = build_optimizer("sgd", m, lr=0.5, weight_decay=0.0)
    assert not {id(p) for g in opt.param_groups for p in g["params"]} & {id(p) for p in target.values()}
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    for step, expected in ((0, 0.99), (10, 0.995), (20, 1.0)):  # 1 - 0.01 (cos(pi k / 20) + 1) / 2
        before = {n: p.detach().clone() for n, p in target.items()}
        loss, _ = m(m.make_batch(x, torch.Generator().manual_seed(step)))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in target.values())
        opt.step()
        m.on_step_end(step, 21)
        assert float(m.momentum_encoder.momentum) == pytest.approx(expected, abs=1e-12)
        for n, p in target.items():
            torch.testing.assert_close(p, expected * before[n] + (1 - expected) * online[n].detach())


def config(out, backbone):
    """A few epochs of 9 steps on digits, no warmup, at rates that move the loss that soon: the CNN 3 epochs of LARS
    at lr 1.0 (the default 0.3 per 256 moves a loss at tau 1.0 too little to test), the ViT 2 epochs of AdamW at
    1e-3 (the paper's optimizer; its 1.5e-4 per 256 is for 300 epochs)."""
    lr = dict(optimizer="adamw", lr=1e-3, epochs=2) if backbone == "vit" else dict(optimizer="lars", lr=1.0, epochs=3)
    return Config(method="mocov3", data="digits", out=str(out), device="cpu", batch_size=128, knn_every=0, threads=1,
                  warmup_epochs=0, backbone=backbone, method_args=TINY, **lr)


@pytest.mark.parametrize("backbone", ["small_cnn", "vit"])
def test_a_few_epochs_on_digits_lower_the_loss_and_resume_exactly(tmp_path, backbone, resumed_equals_full):
    full = pretrain(config(tmp_path / "full", backbone), progress=False)
    recs = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs]
    tau = 0.2 if backbone == "vit" else 1.0
    # loss / (4 tau) is the mean cross-entropy of one direction (2 tau x the sum of two): it falls by 0.02 nats at
    # least (measured: 0.06 for the CNN, 0.11 for the ViT); at chance it is ln(128) = 4.85
    assert (losses[0] - losses[-1]) / (4 * tau) > 0.02, losses
    assert all(r["logs"]["z_std"] > 0.5 / math.sqrt(TINY["proj_dim"]) for r in recs)
    if backbone == "vit":
        return  # resume is the loop's and the EMA's, the same for either backbone: checked once, on the CNN
    mid, end = resumed_equals_full(config(tmp_path / "resumed", backbone), full, losses)  # momentum encoder included
    steps = end["config"]["steps"]
    assert int(mid["model"]["momentum_encoder.updates"]) == steps // 3  # the schedule spans the run, not an epoch
    assert float(mid["model"]["momentum_encoder.momentum"]) < 0.999
    assert float(end["model"]["momentum_encoder.momentum"]) == 1.0
