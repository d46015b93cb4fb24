"""MoCo: a separate momentum key encoder, the queue, shuffled BatchNorm for the keys, a queue fitted to the data."""
import pytest
import torch

from selfsup import Config, SelfSupError
from selfsup.config import resolve
from selfsup.data import image_spec
from selfsup.methods.moco import MoCo


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


def test_moco_forward_enqueues_current_keys():
    torch.manual_seed(0)
    m = make_moco(queue_size=16)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    batch = views_of(m, x)
    m(batch)
    keys = torch.cat([m.keys(batch["v1"], batch["key_perm"]), m.keys(batch["v2"], batch["key_perm"])])
    torch.testing.assert_close(m.queue[:8], keys, atol=1e-5, rtol=1e-5)  # both keys of each image
    assert m.queue_ptr.item() == 8


def test_moco_key_batchnorm_sees_shuffled_sub_batches_and_both_keys_are_enqueued():
    torch.manual_seed(0)
    m = make_moco(queue_size=256)  # key_bn_splits 8, capped at 64 // 16 = 4 sub-batches of 16
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
