"""End-to-end pretraining on real data (digits): learning, resume, divergence, run-directory outputs."""
import json
import math

import pytest
import torch

from selfsup import Config, SelfSupError, embed, evaluate, pretrain
from selfsup.evaluate import class_balanced_subset, extract_features, knn_accuracy
from selfsup.models import Encoder, build_backbone
from selfsup.rundir import RunPaths, build_method, checkpoint_spec, load_run
from selfsup.train.checkpoint import load_checkpoint
from selfsup.train.loop import TrainingDiverged


def cfg(tmp_path, method_args=None, **kw):
    base = dict(data="digits", out=str(tmp_path / "run"), device="cpu", backbone="small_cnn", batch_size=128,
                epochs=2, knn_every=1, warmup_epochs=1.0)
    base.update(kw)
    if base.get("method", "simclr") != "autoencoder":
        method_args = {"proj_hidden": 128, **(method_args or {})}
    return Config(**base, method_args=method_args or {})


def knn_of(encoder, train, test, fraction=1.0):
    dev = torch.device("cpu")
    idx = class_balanced_subset(train.labels, fraction, seed=0)
    ftr = extract_features(encoder, train.x[idx], dev)
    fte = extract_features(encoder, test.x, dev)
    k = 10 if fraction < 1 else 20
    return knn_accuracy(ftr, train.labels[idx], fte, test.labels, 10, k=k, temperature=0.1)


def test_simclr_on_digits_beats_random_init(tmp_path, digits):
    # Random conv features are already ~96% kNN on 8x8 digits with every label, so the margin is measured with
    # a 5% label bank (about 60 images), where the features themselves have to carry the classes.
    train, test = digits
    run_dir = pretrain(cfg(tmp_path, method="simclr", epochs=25, knn_every=0), progress=False)
    run = load_run(run_dir)
    trained = {f: knn_of(run.encoder, train, test, f) for f in (0.05, 1.0)}
    best_random = {0.05: 0.0, 1.0: 0.0}
    for seed in range(3):
        torch.manual_seed(seed)
        enc = Encoder(build_backbone("small_cnn", run.spec), run.spec)
        for f in best_random:
            best_random[f] = max(best_random[f], knn_of(enc, train, test, f))
    print(f"simclr kNN {trained} vs best of 3 random inits {best_random}")
    assert trained[0.05] > best_random[0.05] + 0.05
    assert trained[1.0] > best_random[1.0]


def test_autoencoder_beats_mean_image(tmp_path, digits):
    train, test = digits
    run_dir = pretrain(cfg(tmp_path, method="autoencoder", backbone="mlp", epochs=30, batch_size=64,
                           knn_every=0), progress=False)
    ck = load_checkpoint(RunPaths(run_dir).last)
    method = build_method(Config.from_dict(ck["config"]), checkpoint_spec(ck))
    method.load_state_dict(ck["model"])
    method.eval()
    x = test.x.float() / 255
    with torch.no_grad():
        err = method({"x": x})[0].item()
    baseline = ((x - train.x.float().mean(0) / 255) ** 2).mean().item()
    print(f"autoencoder test MSE {err:.4f} vs mean-image {baseline:.4f}")
    assert err < 0.35 * baseline


def test_conv_autoencoder_learns(tmp_path, digits):
    train, test = digits
    run_dir = pretrain(cfg(tmp_path, method="autoencoder", backbone="small_cnn", epochs=8, batch_size=64,
                           knn_every=0), progress=False)
    losses = [json.loads(line)["loss"] for line in open(RunPaths(run_dir).metrics)]
    baseline = ((test.x.float() - train.x.float().mean(0)) ** 2).mean().item() / 255**2
    assert losses[-1] < 0.6 * baseline and losses[-1] < losses[0]


def test_resume_gives_identical_weights(tmp_path, pretrain_until):
    full = pretrain(cfg(tmp_path / "a", method="moco", epochs=3, method_args=dict(queue_size=256)), progress=False)
    pretrain_until(cfg(tmp_path / "b", method="moco", epochs=3, method_args=dict(queue_size=256)), 1)
    assert load_checkpoint(RunPaths(tmp_path / "b" / "run").last)["epoch"] == 1
    resumed = pretrain(Config(out=str(tmp_path / "b" / "run"), epochs=3), resume=True, progress=False)
    a = load_checkpoint(RunPaths(full).last)
    b = load_checkpoint(RunPaths(resumed).last)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # queue, key encoder and BN stats included
    recs = [json.loads(line) for line in open(RunPaths(resumed).metrics)]
    assert [r["epoch"] for r in recs] == [1, 2, 3]


def test_step_budget_ends_inside_an_epoch_and_resumes_exactly(tmp_path, pretrain_until, capsys):
    # 1257 digits at batch 128: 9 steps an epoch, so 20 steps are 2 epochs and 2 steps of a third
    def ae(out):
        return Config(method="autoencoder", data="digits", out=str(out), device="cpu", backbone="mlp",
                      batch_size=128, steps=20, knn_every=0)

    full = pretrain(ae(tmp_path / "a"), progress=False)
    a = load_checkpoint(RunPaths(full).last)
    saved = Config.load(RunPaths(full).config)
    assert (saved.steps, saved.epochs, a["step"], a["epoch"]) == (20, 3, 20, 3)
    recs = [json.loads(line) for line in open(RunPaths(full).metrics)]
    assert [(r["step"], r.get("epoch_steps")) for r in recs] == [(9, None), (18, None), (20, 2)]
    assert recs[-1]["lr"] < recs[-2]["lr"] < recs[0]["lr"]  # the cosine decays to the budget's last step

    pretrain_until(ae(tmp_path / "b"), 2)
    resumed = pretrain(Config(out=str(tmp_path / "b")), resume=True, progress=False)
    b = load_checkpoint(RunPaths(resumed).last)
    assert (b["step"], b["epoch"]) == (20, 3)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [json.loads(line) for line in open(RunPaths(resumed).metrics)][-1]["lr"] == recs[-1]["lr"]

    capsys.readouterr()
    before = {p: p.read_bytes() for p in (RunPaths(full).last, RunPaths(full).metrics, RunPaths(full).config)}
    pretrain(Config(out=str(full)), resume=True, progress=False)  # a finished run: nothing to train
    assert "finished, nothing to train" in capsys.readouterr().err
    assert all(p.read_bytes() == data for p, data in before.items())


def test_resume_with_another_epochs_is_refused_before_anything_is_written(tmp_path, capsys):
    from selfsup.cli import main

    run = tmp_path / "run"
    pretrain(cfg(tmp_path, method="autoencoder", backbone="mlp", epochs=1, knn_every=0), progress=False)
    before = {p.name: p.read_bytes() for p in (run / "config.yaml", run / "metrics.jsonl", RunPaths(run).last)}
    capsys.readouterr()
    assert main(["pretrain", "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--resume continues" in err[0] and "--out NEW_DIR --epochs 3" in err[0], err
    assert {p.name: p.read_bytes() for p in (run / "config.yaml", run / "metrics.jsonl", RunPaths(run).last)} == before
    assert main(["pretrain", "--out", str(run), "--resume", "--epochs", "1", "--no-progress"]) == 0  # its own: fine


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, pretrain_until):
    c = cfg(tmp_path, method="simclr", epochs=3, knn_every=0)
    pretrain_until(c, 1)
    run_dir = tmp_path / "run"
    last = RunPaths(run_dir).last
    good = last.read_bytes()

    from selfsup.methods.simclr import SimCLR

    real_forward = SimCLR.forward

    def poisoned(self, batch):
        loss, logs = real_forward(self, batch)
        return loss * float("nan"), logs

    monkeypatch.setattr(SimCLR, "forward", poisoned)
    with pytest.raises(TrainingDiverged) as e:
        pretrain(Config(out=str(run_dir)), resume=True, progress=False)
    msg = str(e.value)
    assert "nan" in msg and "epoch 2" in msg and str(last) in msg and "(epoch 1)" in msg
    assert last.read_bytes() == good
    assert json.loads(open(RunPaths(run_dir).metrics).read().splitlines()[-1])["event"] == "diverged"


def test_run_directory_has_config_metrics_plots(tmp_path):
    run_dir = pretrain(cfg(tmp_path, method="simclr", epochs=2), progress=False)
    p = RunPaths(run_dir)
    saved = Config.load(p.config)
    assert saved.method == "simclr" and saved.epochs == 2 and saved.lr is not None  # resolved, rebuildable
    recs = [json.loads(line) for line in open(p.metrics)]
    assert [r["epoch"] for r in recs] == [1, 2]
    assert all(0.0 <= r["knn"] <= 1.0 and r["loss"] > 0 for r in recs)
    assert all(0 <= r["logs"]["pos_acc"] <= 1 and r["logs"]["z_std"] > 0 for r in recs)  # SimCLR's own logs
    for name in ("loss.png", "knn.png", "views.png", "logs.png"):
        data = (p.plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    with pytest.raises(SelfSupError, match="already holds a run"):
        pretrain(cfg(tmp_path, method="simclr", epochs=2), progress=False)


def test_evaluation_drops_projector_and_embed_keeps_order(tmp_path, digits):
    train, test = digits
    run_dir = pretrain(cfg(tmp_path, method="simclr", epochs=1, method_args=dict(proj_dim=32)), progress=False)
    run = load_run(run_dir)
    ck = load_checkpoint(RunPaths(run_dir).last)
    assert any(k.startswith("projector.") for k in ck["model"])
    assert not any("projector" in k for k in run.encoder.state_dict())
    out = embed(run_dir, "digits", tmp_path / "f.npz", split="test")
    import numpy as np

    z = np.load(out)
    assert z["features"].shape == (len(test), run.encoder.feature_dim) != (len(test), 32)
    np.testing.assert_array_equal(z["labels"], test.labels.numpy())
    ref = extract_features(run.encoder, test.x, torch.device("cpu"))
    assert not run.encoder.training and not run.encoder.backbone.training  # a loaded run stays in eval mode
    np.testing.assert_allclose(z["features"], ref.numpy(), rtol=1e-5, atol=1e-5)
    result = evaluate(run_dir, fractions=(0.1, 1.0), protocols=("knn", "linear"), progress=False)
    rows = {(r["features"], r["fraction"]) for r in result["results"]}
    assert rows == {(n, f) for n in ("simclr (ours)", "random init", "raw pixels") for f in (0.1, 1.0)}
    assert (RunPaths(run_dir).root / "eval.json").is_file() and "raw pixels" in (run_dir / "eval.md").read_text()


def test_bf16_precision_path_trains_on_cpu(tmp_path, monkeypatch, digits):
    # --precision bf16 runs the GPU's autocast path on a CPU: dtype mistakes show up here without a GPU.
    import selfsup.train.loop as loop

    dtypes, built = set(), []

    def build(*a, **k):
        m = loop_build(*a, **k)
        m.backbone.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype) if mod.training else None)
        built.append(m)
        return m

    loop_build = loop.build_method
    monkeypatch.setattr(loop, "build_method", build)
    run_dir = pretrain(cfg(tmp_path / "s", method="simclr", epochs=3, precision="bf16", knn_every=0), progress=False)
    assert dtypes == {torch.bfloat16}
    losses = [json.loads(line)["loss"] for line in open(RunPaths(run_dir).metrics)]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0] - 0.1
    pretrain(cfg(tmp_path / "m", method="moco", epochs=1, method_args=dict(queue_size=256), precision="bf16",
                 knn_every=0),
             progress=False)
    enqueued = 2 * (len(digits[0]) // 128 * 128)  # both keys of every image, into a ring of 256
    assert built[-1].queue.dtype == torch.float32 and built[-1].queue_ptr.item() == enqueued % 256
