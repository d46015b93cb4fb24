"""Optimizer groups, LARS, schedule, checkpoints (atomic, background writer), metrics, MoCo's key encoder and queue."""
import pickle

import pytest
import torch
from torch import nn

from selfsup.errors import SelfSupError
from selfsup.methods.ema import cosine_momentum, ema_update, momentum_copy
from selfsup.train.checkpoint import CheckpointWriter, load_checkpoint, save_atomic
from selfsup.train.logging import append_jsonl, knn_title, plot_curves, read_jsonl, truncate_epochs
from selfsup.train.optim import LARS, build_optimizer, lr_at, param_groups


def tiny_net():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_param_groups_keep_biases_and_norms_out_of_decay():
    net = tiny_net()
    decay, no_decay = param_groups(net, 0.1)
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[3].bias)}
    assert no_decay["weight_decay"] == 0 and no_decay["lars_exclude"]


def test_lars_adapts_weights_but_not_biases():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(10, 10))
    b = nn.Parameter(torch.randn(10))
    opt = LARS([dict(params=[w], weight_decay=0.0, lars_exclude=False),
                dict(params=[b], weight_decay=0.0, lars_exclude=True)], lr=1.0, momentum=0.0, eta=0.02)
    w.grad = torch.full_like(w, 100.0)
    b.grad = torch.full_like(b, 0.5)
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt.step()
    # Weight step is rescaled to eta * ||w|| regardless of the gradient's size; the bias takes the plain SGD step.
    assert torch.linalg.vector_norm(w0 - w.detach()).item() == pytest.approx(0.02 * w0.norm().item(), rel=1e-4)
    torch.testing.assert_close(b.detach(), b0 - 0.5)


def _lars_reference_step(params_and_groups, state, lr, momentum, eta):
    """LARS written per parameter, as in the paper (the oracle for the multi-tensor version)."""
    for p, wd, exclude in params_and_groups:
        d = p.grad
        if not exclude:
            d = d + wd * p
            pn, dn = p.norm(), d.norm()
            d = d * (eta * pn / dn if pn > 0 and dn > 0 else 1.0)
        buf = state.get(p)
        state[p] = d.clone() if buf is None else buf * momentum + d
        p.sub_(lr * state[p])


def test_lars_matches_per_parameter_reference():
    torch.manual_seed(0)
    net, ref = tiny_net(), tiny_net()
    ref.load_state_dict(net.state_dict())
    opt = build_optimizer("lars", net, lr=0.5, weight_decay=1e-2)
    state = {}
    for _ in range(4):
        x = torch.randn(16, 4)
        for m in (net, ref):
            m.zero_grad()
            m(x).pow(2).mean().backward()
        opt.step()
        with torch.no_grad():
            _lars_reference_step([(p, 1e-2 if p.ndim > 1 else 0.0, p.ndim <= 1) for p in ref.parameters()],
                                 state, lr=0.5, momentum=0.9, eta=0.02)
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_optimizers_build_and_step():
    for name in ("sgd", "lars", "adamw"):
        net = tiny_net()
        opt = build_optimizer(name, net, 0.1, 1e-4)
        net(torch.randn(6, 4)).sum().backward()
        opt.step()
    with pytest.raises(SelfSupError):
        build_optimizer("rmsprop", tiny_net(), 0.1, 0.0)


def test_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_budget_in_steps_is_exact_and_warmup_is_a_capped_share_of_it():
    from selfsup.config import Config, resolve, warmup_steps

    def run(n, device="cpu", **kw):
        c = resolve(Config(method="simclr", **kw), device, n)
        per = n // c.batch_size
        return c.steps, c.epochs, per, warmup_steps(c, per)

    # the cases: 600 steps of 400 an epoch, and 1,400 steps of 1,953 (500,000 images at batch 256)
    assert run(400 * 256, steps=600) == (600, 2, 400, 30)  # not 800 steps, all of them warming up
    assert run(500_000) == (1400, 1, 1953, 70)  # not one 1,953-step epoch
    assert run(60_000, "cuda") == (23400, 200, 117, 1170)  # SimCLR's 10 warm-up epochs of 200
    assert run(60_000, "cuda", steps=100_000)[3] == 1170  # a long run: capped at 10 epochs
    assert run(60_000, epochs=3)[:2] == (702, 3)  # --epochs: whole epochs, as before
    assert run(60_000, warmup=0.0)[3] == 0  # MoCo v2's recipe: no warm-up
    c = resolve(Config(method="simclr", steps=1000), "cpu", 60_000)
    assert resolve(c, "cpu", 60_000) == c  # a saved config resolves to itself (resume keeps its schedule)
    # config.yaml of a run made before `warmup` existed: warmup_epochs: 2.0, and its warm-up stays 2 epochs
    old = Config.from_dict(dict(method="simclr", epochs=6, steps=1404, batch_size=256, warmup_epochs=2.0))
    assert warmup_steps(resolve(old, "cpu", 60_000), 234) == 468


def test_checkpoint_is_atomic_and_loads_without_pickled_code(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_atomic({"w": torch.arange(3), "epoch": 2, "config": {"a": [1, 2]}}, path)
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(SelfSupError, match="cannot read checkpoint"):
        load_checkpoint(evil)


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)
    with pytest.raises(Exception):
        save_atomic({"epoch": 2, "bad": lambda: 0}, path)  # lambdas cannot be saved
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_ema_and_momentum_schedule():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    t = momentum_copy(a)
    assert t is not a and all(p.requires_grad is False for p in t.parameters())
    before = t.weight.detach().clone()
    ema_update(t, b, 0.9)
    torch.testing.assert_close(t.weight, 0.9 * before + 0.1 * b.weight.detach())
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 1.0) == pytest.approx(1.0)


def test_checkpoint_writer_saves_a_snapshot_and_reports_errors(tmp_path):
    w = torch.zeros(1000)
    writer = CheckpointWriter()
    writer.save(dict(model=dict(w=w), epoch=1), tmp_path / "last.pt", tmp_path / "epoch_0001.pt")
    w += 1.0  # training goes on while the file is written: the checkpoint keeps the values at save time
    writer.wait()
    for name in ("last.pt", "epoch_0001.pt"):
        saved = load_checkpoint(tmp_path / name)
        assert saved["epoch"] == 1 and torch.equal(saved["model"]["w"], torch.zeros(1000))
    (tmp_path / "file").write_text("x")
    writer.save(dict(w=w), tmp_path / "file" / "last.pt")  # a file where a folder should be
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # the error is reported once


def test_truncate_epochs_keeps_records_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for rec in [dict(event="epoch", epoch=1), dict(event="diverged", epoch=3), dict(event="epoch", epoch=2),
                dict(event="epoch", epoch=3)]:
        append_jsonl(path, rec)
    truncate_epochs(path, 1)
    assert read_jsonl(path) == [dict(event="epoch", epoch=1), dict(event="diverged", epoch=3)]


@pytest.mark.parametrize("method,backbone", [("simclr", "resnet18"), ("moco", "small_cnn"), ("autoencoder", "mlp"),
                                            ("mocov3", "vit")])
def test_methods_compile_to_one_graph(method, backbone):
    # A graph break under --compile means slow, partly eager steps on the GPU; catch it without one.
    import torch._dynamo as dynamo

    from selfsup.config import Config, resolve
    from selfsup.data import image_spec
    from selfsup.rundir import build_method

    cfg = resolve(Config(method=method, backbone=backbone), "cuda")
    m = build_method(cfg, image_spec((1, 28, 28), [0.3], [0.35]))
    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    batch = m.make_batch(x, torch.Generator().manual_seed(0))
    dynamo.reset()
    explained = dynamo.explain(m)(batch)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_knn_plot_title_names_the_last_monitored_sizes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for e in range(1, 8):  # monitored every 5 epochs: epoch 7, the latest, has no kNN record
        append_jsonl(path, dict(event="epoch", epoch=e, loss=1.0 / e,
                                **(dict(knn=0.8, knn_bank=600, knn_queries=100) if e % 5 == 0 else {})))
    written = plot_curves(path, tmp_path / "plots")
    assert [p.name for p in written] == ["loss.png", "knn.png"]
    assert knn_title(read_jsonl(path)) == "Online kNN (k=200, T=0.1)\nbank 600, queries 100"
