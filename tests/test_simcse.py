"""Unsupervised SimCSE: the loss against eq. 4 written out, the dropout masks, training and resume on a text file.
(Two processes against one: tests/test_distributed_joint.py.)"""
import json

import pytest
import torch

from selfsup import Config, pretrain
from selfsup.data import DataSpec
from selfsup.data.tokenize import CLS_ID, NUM_SPECIAL, PAD_ID
from selfsup.losses import nt_xent, simcse_loss
from selfsup.methods.registry import get_method
from selfsup.methods.simcse import SimCSE, applied_dropout
from selfsup.rundir import RunPaths, load_run
from selfsup.train.checkpoint import load_checkpoint
from test_mlm import write_corpus

VOCAB = 60


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def direct_loss(h1: torch.Tensor, h2: torch.Tensor, t: float) -> torch.Tensor:
    """Gao et al. 2021, eq. 4, one sentence at a time: -log e^{sim(h_i, h_i+)/t} / sum_j e^{sim(h_i, h_j+)/t}."""
    def sim(a, b):
        return (a * b).sum() / (a.norm() * b.norm())

    n = h1.shape[0]
    terms = []
    for i in range(n):
        num = torch.exp(sim(h1[i], h2[i]) / t)
        den = sum(torch.exp(sim(h1[i], h2[j]) / t) for j in range(n))
        terms.append(-torch.log(num / den))
    return sum(terms) / n


@pytest.mark.parametrize("t", [0.05, 0.5])
def test_loss_equals_eq_4_in_value_and_gradient(t):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 12, 8, generator=g, dtype=torch.float64)
    h1, h2 = z[0], z[0] + 1.5 * z[1]  # correlated passes, as two dropout masks of one sentence give
    a1, a2 = (h.clone().requires_grad_(True) for h in (h1, h2))
    d1, d2 = (h.clone().requires_grad_(True) for h in (h1, h2))
    loss = simcse_loss(a1, a2, t)
    ref = direct_loss(d1, d2, t)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)  # the loss runs in fp32
    torch.testing.assert_close(a1.grad, d1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a2.grad, d2.grad, rtol=1e-4, atol=1e-5)
    assert loss.item() > 0.1  # not a trivially solved batch
    # Not NT-Xent (h2 is never an anchor, h1 never a candidate): that loss differs on the same pairs.
    assert abs(nt_xent(h1, h2, t).item() - loss.item()) > 0.05


def sentences(n=16, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(NUM_SPECIAL, VOCAB, (n, length), generator=g)
    ids[:, 0] = CLS_ID
    ids[n // 2:, length // 2:] = PAD_ID
    return ids


def method(**kw):
    torch.manual_seed(0)
    return SimCSE(DataSpec("tokens", (12,), vocab_size=VOCAB, pad_id=PAD_ID), SimCSE.Hparams(**kw), "transformer_tiny")


def test_dropout_masks_are_drawn_at_the_rate_from_the_generator_and_applied_at_every_site():
    m, ids = method(), sentences()
    batch = m.make_batch(ids, torch.Generator().manual_seed(1))
    keep = batch["keep"]
    assert keep.shape == (16, 2, 1 + 2 * 2, 12, 32)  # B x passes x sites (embeddings + 2 per block) x L x D
    assert abs(keep.float().mean().item() - 0.9) < 0.01
    assert torch.equal(keep, m.make_batch(ids, torch.Generator().manual_seed(1))["keep"])  # resumable draws
    seen = []
    plain = m.backbone.tok(ids) + m.backbone.pos[:, :12]
    site0 = batch["keep"][:, 0, 0]  # first pass, embedding site
    with applied_dropout(m.backbone, batch["keep"][:, 0].transpose(0, 1), 0.1):
        # registered after the dropout's own hook, so it sees the block's input as the block does
        capture = m.backbone.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        m.backbone(ids)
    capture.remove()
    torch.testing.assert_close(seen[0], plain * site0 / 0.9)  # the embedding sum, dropped and rescaled
    hooks = [b._forward_pre_hooks for b in m.backbone.blocks] + [b.proj._forward_hooks for b in m.backbone.blocks]
    assert all(len(h) == 0 for h in hooks)  # nothing left behind for evaluation
    m.eval()
    with torch.no_grad():
        before = m.backbone(ids)
        loss, logs = m(batch)
        torch.testing.assert_close(m.backbone(ids), before)
    # Every site acts: keeping everything but one site's mask changes the sentence vectors.
    with torch.no_grad():
        full = dict(batch, keep=torch.ones_like(keep))
        base = m.mlp(m.backbone(ids))
        loss_none = m(full)[0]
        for s in range(keep.shape[2]):
            one = torch.ones_like(keep)
            one[:, 0, s] = keep[:, 0, s]
            with applied_dropout(m.backbone, one[:, 0].transpose(0, 1), 0.1):
                assert not torch.allclose(m.mlp(m.backbone(ids)), base), s
    assert loss_none < loss  # identical passes are easier positives than two dropout masks


def test_evaluation_gets_the_backbone_pooling_as_set_without_the_mlp(tmp_path):
    data = write_corpus(tmp_path / "c.tsv")
    run_dir = pretrain(cfg(tmp_path, data, epochs=1, knn_every=0), progress=False)
    run = load_run(run_dir)
    ckpt = load_checkpoint(RunPaths(run_dir).last)["model"]
    assert run.encoder.state_dict().keys() == {k for k in ckpt if k.startswith("backbone.")}
    assert any(k.startswith("mlp.") for k in ckpt)
    ids = torch.tensor([[CLS_ID, 7, 8, 9] + [PAD_ID] * 12])
    tokens = run.encoder.backbone.forward_features(ids)["tokens"]
    torch.testing.assert_close(run.encoder(ids), tokens[:, :4].mean(1))  # the mean over non-pad, no MLP
    assert get_method("simcse").Hparams().pool == "mean"
    cls_run = pretrain(cfg(tmp_path / "cls", data, epochs=1, knn_every=0, method_args={"pool": "cls"}), progress=False)
    encoder = load_run(cls_run).encoder
    torch.testing.assert_close(encoder(ids), encoder.backbone.forward_features(ids)["tokens"][:, 0])


def cfg(tmp_path, data, **kw):
    base = dict(method="simcse", data=str(data), out=str(tmp_path / "run"), device="cpu", lr=1e-3,
                backbone="transformer_tiny", batch_size=32, epochs=4, knn_every=1, warmup_epochs=1.0, vocab_size=100,
                seq_len=16)  # lr: a toy corpus of 160 lines in 20 steps, faster than the default 3e-4
    base.update(kw)
    return Config(**base)


def test_simcse_trains_with_falling_loss_and_resumes_exactly(tmp_path, pretrain_until):
    data = write_corpus(tmp_path / "c.tsv")
    full = pretrain(cfg(tmp_path / "a", data), progress=False)
    pretrain_until(cfg(tmp_path / "b", data), 2)
    resumed = pretrain(Config(out=str(tmp_path / "b" / "run"), epochs=4), resume=True, progress=False)
    a, b = load_checkpoint(RunPaths(full).last), load_checkpoint(RunPaths(resumed).last)
    assert a["step"] == b["step"] and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    recs = [json.loads(line) for line in open(RunPaths(full).metrics)]
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4]
    assert recs[-1]["loss"] < 0.7 * recs[0]["loss"], [r["loss"] for r in recs]
    assert recs[-1]["logs"]["pos_acc"] > recs[0]["logs"]["pos_acc"]
