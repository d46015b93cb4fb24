"""MoCo: a separate momentum key encoder, the queue, shuffled BatchNorm for the keys, a queue fitted to the data,
the presets (the CIFAR-10 demo's defaults, the paper's one setting away), and an independent hand-written MoCo
that the method must match step by step."""
import copy
import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import Config, SelfSupError
from selfsup.config import resolve
from selfsup.data import image_spec
from selfsup.methods.moco import PRESETS, MoCo


def make_moco(queue_size=16, **kw):
    hp = MoCo.Hparams(proj_hidden=32, proj_dim=8, queue_size=queue_size, momentum=0.9, **kw)
    return MoCo(image_spec((1, 8, 8), [0.5], [0.25]), hp, "small_cnn")


def views_of(m, x):
    return m.make_batch(x, torch.Generator().manual_seed(0))


def test_moco_key_encoder_is_a_separate_momentum_copy():
    torch.manual_seed(0)
    m = make_moco()
    key_backbone, key_projector = m.key_encoder.net
    q_params = dict(m.backbone.named_parameters())
    k_params = dict(key_backbone.named_parameters())
    assert key_backbone is not m.backbone and key_projector is not m.projector
    for name, p in q_params.items():
        assert k_params[name].data_ptr() != p.data_ptr()  # distinct storage
        assert not k_params[name].requires_grad
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    batch = views_of(m, x)
    k_before = {n: p.detach().clone() for n, p in key_backbone.named_parameters()}
    loss, _ = m(batch)
    loss.backward()
    assert all(p.grad is None for p in key_backbone.parameters())
    assert all(p.grad is None for p in key_projector.parameters())
    q_before = {n: p.detach().clone() for n, p in m.backbone.named_parameters()}
    opt.step()
    k_mid = {n: p.detach().clone() for n, p in key_backbone.named_parameters()}
    for n in k_before:  # the optimizer never touches the keys
        torch.testing.assert_close(k_mid[n], k_before[n])
    m.on_step_end(0, 10)
    for n, p in key_backbone.named_parameters():
        expected = 0.9 * k_before[n] + 0.1 * dict(m.backbone.named_parameters())[n].detach()
        torch.testing.assert_close(p.detach(), expected)
    assert any(not torch.equal(q_before[n], p.detach()) for n, p in m.backbone.named_parameters())


def test_moco_queue_enqueues_and_dequeues_in_order():
    m = make_moco(queue_size=10)
    keys = [torch.full((4, 8), float(i)) for i in range(1, 4)]
    m.enqueue(keys[0])
    assert m.queue_ptr.item() == 4 and (m.queue[:4] == 1).all()
    m.enqueue(keys[1])
    assert m.queue_ptr.item() == 8 and (m.queue[4:8] == 2).all()
    m.enqueue(keys[2])  # wraps: slots 8,9 then 0,1 (the oldest) are replaced
    assert m.queue_ptr.item() == 2
    assert (m.queue[8:10] == 3).all() and (m.queue[0:2] == 3).all() and (m.queue[2:4] == 1).all()


def reference_keys(key_net: nn.Module, v: torch.Tensor, perm: torch.Tensor, group: int) -> torch.Tensor:
    """The demo's single-GPU shuffle BN, written out: permute, encode in consecutive groups, undo the permutation
    with its inverse (argsort), normalise."""
    shuffled = v[perm]
    out = torch.cat([key_net(shuffled[i:i + group]) for i in range(0, len(v), group)])
    return F.normalize(out[torch.argsort(perm)], dim=1)


def reference_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    """InfoNCE as in He et al. 2020, Algorithm 1: positive logit first, then the queue, cross-entropy to 0."""
    q = F.normalize(q, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / t
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


@pytest.mark.parametrize("symmetric", [True, False])
def test_moco_matches_an_independent_hand_written_moco_step_by_step(symmetric):
    """A hand-written MoCo beside the method: its own copy of the encoder as key encoder, its own momentum update,
    its own shuffle and unshuffle, its own queue and pointer. After every step the method's queue and pointer must
    equal the reference's, and its loss the reference's loss on the reference's keys and queue (the queries come
    from the method's own query encoder, the thing being trained). 5 steps of 16: the queue of 48 wraps."""
    torch.manual_seed(0)
    m = make_moco(queue_size=48, symmetric=symmetric, key_bn_group=8)  # batch 16: 2 key BN groups of 8
    mom, t, b, group = 0.9, m.hp.temperature, 16, 8
    ref_net = copy.deepcopy(nn.Sequential(m.backbone, m.projector))  # the encoder before any step
    for p in ref_net.parameters():
        p.requires_grad_(False)
    ref_queue, ptr = m.queue.clone(), 0  # the same random start
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    g = torch.Generator().manual_seed(1)
    for step in range(5):
        x = torch.randint(0, 256, (b, 1, 8, 8), dtype=torch.uint8, generator=g)
        batch = m.make_batch(x, g)
        v1, v2, perm = batch["v1"], batch["v2"], batch["key_perm"]
        with torch.no_grad():
            k1, k2 = reference_keys(ref_net, v1, perm, group), reference_keys(ref_net, v2, perm, group)
            if symmetric:
                q1, q2 = m.projector(m.backbone(torch.cat([v1, v2]))).chunk(2)
                expected = 0.5 * (reference_loss(q1, k2, ref_queue, t) + reference_loss(q2, k1, ref_queue, t))
            else:
                expected = reference_loss(m.projector(m.backbone(v1)), k2, ref_queue, t)
        loss, _ = m(batch)
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6, msg=f"loss, step {step}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_step_end(step, 5)
        for key in (torch.cat([k1, k2]) if symmetric else k2):  # enqueue, oldest out first
            ref_queue[ptr] = key
            ptr = (ptr + 1) % len(ref_queue)
        with torch.no_grad():  # the momentum update, from the query encoder after the optimizer step
            students = itertools.chain(m.backbone.parameters(), m.projector.parameters())
            for pk, pq in zip(ref_net.parameters(), students, strict=True):
                pk.mul_(mom).add_(pq, alpha=1 - mom)
        torch.testing.assert_close(m.queue, ref_queue, rtol=1e-4, atol=1e-5, msg=f"queue, step {step}")
        assert m.queue_ptr.item() == ptr


def test_moco_key_batchnorm_sees_shuffled_sub_batches_and_both_keys_are_enqueued():
    torch.manual_seed(0)
    m = make_moco(queue_size=256, key_bn_group=16)  # 64 // 16 = 4 groups of 16
    b = 64
    # Sample i of the first view is the constant image i, of the second 1000 + i: the input of a layer
    # tells which samples go through it together, i.e. which share BatchNorm statistics after it.
    v1 = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, 8, 8).contiguous()
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(1))
    batch = {"v1": v1, "v2": v1 + 1000, "key_perm": perm}
    seen = {"query": [], "key": []}
    key_backbone = m.key_encoder.net[0]
    for name, net in (("query", m.backbone), ("key", key_backbone)):
        net.features[0][0].register_forward_hook(
            lambda mod, inp, out, name=name: seen[name].append(sorted(inp[0][:, 0, 0, 0].int().tolist())))
    m(batch)
    assert seen["query"] == [list(range(b)) + list(range(1000, 1000 + b))]  # queries: one BatchNorm batch
    groups = [sorted(perm[i:i + 16].tolist()) for i in range(0, b, 16)]
    assert seen["key"] == groups + [[1000 + j for j in g] for g in groups]  # keys: 4 shuffled groups per view
    assert all(g != list(range(g[0], g[0] + 16)) for g in groups)  # not the query batch's contiguous order
    with torch.no_grad():
        both = torch.cat([m.keys(batch["v1"], perm), m.keys(batch["v2"], perm)])
    torch.testing.assert_close(m.queue[:2 * b], both, atol=1e-5, rtol=1e-5)  # both keys, in order
    assert m.queue_ptr.item() == 2 * b


def test_moco_queue_fits_the_data():
    assert resolve(Config(method="moco"), "cpu", n=1000).method_args["queue_size"] == 500  # half the samples
    assert resolve(Config(method="moco"), "cpu", n=60000).method_args["queue_size"] == 4096
    assert resolve(Config(method="moco", method_args={"queue_size": 900}), "cpu", n=1000).method_args[
        "queue_size"] == 900
    with pytest.raises(SelfSupError, match="queue_size 2000 exceeds the 1000 training samples"):
        resolve(Config(method="moco", method_args={"queue_size": 2000}), "cpu", n=1000)
    with pytest.raises(SelfSupError, match="queue_size must be >= 1"):
        resolve(Config(method="moco", method_args={"queue_size": 0}), "cpu")


def test_moco_defaults_are_the_cifar_demo_and_the_paper_is_one_setting_away():
    demo = resolve(Config(method="moco", batch_size=512), "cpu", n=50000)
    assert demo.method_args == {**demo.method_args, "preset": "cifar-demo", "temperature": 0.1, "momentum": 0.99,
                                "symmetric": True, "key_bn_group": 64, "queue_size": 4096}
    assert (demo.optimizer, demo.lr, demo.weight_decay) == ("sgd", 0.06, 5e-4)  # the demo: lr 0.06 at batch 512
    paper = resolve(Config(method="moco", batch_size=256, method_args={"preset": "paper"}), "cpu", n=1_281_167)
    assert paper.method_args == {**paper.method_args, "preset": "paper", "temperature": 0.2, "momentum": 0.999,
                                 "symmetric": False, "key_bn_group": 32, "queue_size": 65536}
    assert (paper.lr, paper.weight_decay) == (0.03, 1e-4)  # MoCo v2: lr 0.03 at batch 256, wd 1e-4
    # explicit settings override the preset; what is resolved is what config.yaml records (and resume re-reads)
    mixed = resolve(Config(method="moco", batch_size=256, weight_decay=0.0,
                           method_args={"preset": "paper", "temperature": 0.1, "symmetric": True}), "cpu", n=1000)
    assert mixed.method_args["temperature"] == 0.1 and mixed.method_args["symmetric"] is True
    assert mixed.method_args["momentum"] == 0.999 and mixed.weight_decay == 0.0 and mixed.lr == 0.03
    assert mixed.method_args["queue_size"] == 500  # the paper's 65536, capped at half the data
    again = resolve(Config(method="moco", batch_size=256, method_args=mixed.method_args), "cpu", n=1000)
    assert again.method_args == mixed.method_args
    # the Python API's Hparams apply the preset too; the dataclass's shown defaults are the default preset's
    hp = MoCo.Hparams(preset="paper")
    assert (hp.temperature, hp.momentum, hp.symmetric, hp.key_bn_group) == (0.2, 0.999, False, 32)
    assert {k: getattr(MoCo.Hparams(), k) for k in ("temperature", "momentum", "symmetric", "key_bn_group")} == \
        {k: PRESETS["cifar-demo"][k] for k in ("temperature", "momentum", "symmetric", "key_bn_group")}
    with pytest.raises(SelfSupError, match=re.escape("preset expects 'cifar-demo'|'paper', got 'imagenet'")):
        resolve(Config(method="moco", method_args={"preset": "imagenet"}), "cpu")
    note = MoCo(image_spec((1, 8, 8), [0.5], [0.25]), MoCo.Hparams(preset="paper", queue_size=64, proj_hidden=16,
                                                                   proj_dim=8), "small_cnn").describe()
    assert note.startswith("preset paper (Chen et al. 2020 (MoCo v2)'s ImageNet recipe)")  # the recipe line's note


def test_moco_key_batchnorm_groups_depend_on_the_global_batch_only():
    m = make_moco()  # key_bn_group 64 (the demo's 512 / 8)
    assert m.key_groups(512) == 8  # one process at 512: 8 groups of 64
    assert m.key_groups(64) == 2 and m.key_groups(32) == 2 and m.key_groups(20) == 1  # half the batch, >= 16
