"""torchrun + DDP on CPU (gloo, 2 processes): global-batch losses and gradients equal one process's, MoCo's
queue and cross-process key shuffle, bit-identical weights on both ranks, exact resume, checkpoints that load
in one process. Each torchrun start takes a free port (--standalone) and a timeout, so nothing can hang."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dist_workers as W
from selfsup import Config, SelfSupError, evaluate, pretrain
from selfsup.cli import main
from selfsup.distributed import state_digest
from selfsup.rundir import load_run
from selfsup.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def torchrun(*args, procs: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node procs ARGS` on the CPU (a free port of its own), this checkout first."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           *map(str, args)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def two_rank_steps(tmp_path_factory):
    """Both ranks' records of two steps of SimCLR and MoCo (dist_workers.losses)."""
    out = tmp_path_factory.mktemp("losses")
    W.spawn("losses", out / "store", out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def one_process(name: str, state: dict | None = None, steps=slice(None)) -> dict:
    """One process's record of the same steps on the global batches (from `state` when given)."""
    method = W.build(name)
    if state is not None:
        method.load_state_dict(state)
    return W.run_steps(method, method, W.global_batches(name)[steps], 0, 1)


def assert_same_step(rec: dict, ref: dict, step: int, ref_step: int, what: str) -> None:
    torch.testing.assert_close(rec["loss"][step], ref["loss"][ref_step], rtol=1e-5, atol=0, msg=what)
    assert rec["grads"][step].keys() == ref["grads"][ref_step].keys()
    for p, g in ref["grads"][ref_step].items():  # float rounding differs (sums in another order): 1e-5 of the scale
        torch.testing.assert_close(rec["grads"][step][p], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()),
                                   msg=f"{what}: {p}")


@pytest.mark.parametrize("name", ["simclr", "moco", "autoencoder"])
def test_two_processes_give_the_loss_and_gradients_of_one_process_on_the_global_batch(two_rank_steps, name):
    ref = one_process(name)
    for r, rec in enumerate(two_rank_steps):
        assert_same_step(rec[name], ref, 0, 0, f"rank {r}, first step")
    # The second step from the state the two processes reached (the same on both), after an optimizer step, an
    # EMA update and, for MoCo, a queue refilled with both ranks' keys. Started from one process's own state
    # instead, the first step's float rounding (~1e-6 in the weights) grew to ~1e-4 in MoCo's first-layer
    # gradients (measured; most likely ReLUs flipping), too much for a tight tolerance.
    ref = one_process(name, two_rank_steps[0][name]["before"][1], slice(1, 2))
    for r, rec in enumerate(two_rank_steps):
        assert_same_step(rec[name], ref, 1, 0, f"rank {r}, second step")


def test_nt_xent_gradient_through_the_gather_sums_over_processes(two_rank_steps):
    z = torch.randn(2, W.B, 8, generator=torch.Generator().manual_seed(2))
    z1, z2 = z[0].clone().requires_grad_(True), z[1].clone().requires_grad_(True)
    from selfsup.losses import nt_xent

    nt_xent(z1, z2, 0.3).backward()
    b = W.B // 2
    for r, rec in enumerate(two_rank_steps):
        g1, g2 = rec["nt_xent_grads"]
        # rank r's mean over its b anchors is 2x the global mean's share; DDP's average divides by 2 again
        torch.testing.assert_close(g1 / 2, z1.grad[r * b:(r + 1) * b], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(g2 / 2, z2.grad[r * b:(r + 1) * b], rtol=1e-5, atol=1e-7)


def test_distributed_steps_raise_no_warnings_and_keep_the_ranks_identical(two_rank_steps):
    assert two_rank_steps[0]["warnings"] == [] and two_rank_steps[1]["warnings"] == []
    for name in ("simclr", "moco", "autoencoder"):
        a, b = two_rank_steps[0][name]["state"], two_rank_steps[1][name]["state"]
        assert state_digest(a) == state_digest(b), name
    # the query encoder's BatchNorm is global, the key encoder (an EMA teacher) keeps its own per-process one
    assert "GlobalBatchNorm" in two_rank_steps[0]["moco_modules"]
    assert "BatchNorm2d" in two_rank_steps[0]["moco_modules"]


def test_moco_queue_holds_both_ranks_keys_in_one_process_order(two_rank_steps):
    ref = one_process("moco")
    for rec in two_rank_steps:
        rec = rec["moco"]
        assert rec["queue_ptr"] == ref["queue_ptr"] == [2 * W.B, (4 * W.B) % 96]
        for step in range(2):  # k1 of every sample in global order (rank 0's rows, then rank 1's), then every k2
            torch.testing.assert_close(rec["queue"][step], ref["queue"][step], rtol=1e-4, atol=1e-5)


def test_moco_key_encoder_batchnorm_saw_a_batch_shuffled_across_processes(two_rank_steps):
    batch = W.global_batches("moco")[0]
    perm, b = batch["key_perm"], W.B // 2
    for r, rec in enumerate(two_rank_steps):
        seen = rec["moco"]["key_inputs"][0]  # rank r's first key sub-batch (view 1 of step 1)
        rows = perm[r * b:(r + 1) * b]
        torch.testing.assert_close(seen, batch["v1"][rows])  # its part of the globally shuffled batch
        assert (rows < b).any() and (rows >= b).any()  # it held samples of both processes
        assert not torch.equal(seen, batch["v1"][r * b:(r + 1) * b])  # not its own slice


def test_moco_key_batchnorm_groups_on_two_processes_are_one_process_groups(two_rank_steps):
    """Global batch 256, key_bn_group 64: one process normalises 4 groups of 64, two processes 2 groups of 64 each,
    the same 4 sets of samples, so the keys are equal too (before the fix: 8 groups of 32 on one process, 16 of
    16 on two)."""
    method, v, perm = W.key_group_case()
    groups, keys = W.key_groups(method, v, perm)
    assert len(groups) == 4 and all(len(g) == 64 for g in groups)
    both = [g for rec in two_rank_steps for g in rec["key_groups"][0]]
    assert both == groups  # rank 0's groups, then rank 1's: the one process's, in its order
    b = W.KEY_B // 2
    for r, rec in enumerate(two_rank_steps):
        torch.testing.assert_close(rec["key_groups"][1], keys[r * b:(r + 1) * b], rtol=1e-5, atol=1e-6)


def test_colorization_rebalancing_counts_are_summed_over_processes(two_rank_steps):
    """Every process holds the global batch's bin counts (one process's on the whole batch), so both weigh a pixel
    alike; before the fix each counted its own half and rank 0's counts overwrote the other's at the epoch's end.
    (The counts do not depend on the flips: an 8x8 image pooled to 2x2 gives the mirrored cells when flipped.)"""
    method = W.build_colorization()
    ref = W.colour_counts(method, 0, 1)
    for r, rec in enumerate(two_rank_steps):
        for step in range(2):
            assert torch.equal(rec["colour"]["counts"][step], ref["counts"][step]), (r, step)
        from selfsup.views.color import rebalance_weights

        weights = rebalance_weights(ref["counts"][1], method.bins, method.hp.rebalance, method.hp.sigma)
        torch.testing.assert_close(rec["colour"]["weight"], weights[rec["colour"]["bin"]])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-process MoCo run through `torchrun -m selfsup pretrain`, and the same run interrupted after epoch 1
    and resumed (dist_workers.interrupt)."""
    root = tmp_path_factory.mktemp("runs")
    data, labels = W.small_digits(root / "data")
    full, resumed = root / "full", root / "resumed"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**W.PIPELINE, **W.PIPELINE["method_args"]}.items()
             if k != "method_args"]
    torchrun("-m", "selfsup", "pretrain", *flags, "--data", data, "--labels", labels, "--out", full,
             "--device", "cpu", "--no-progress")
    W.spawn("interrupt", root / "store", resumed, data, labels)
    return full, resumed, data, labels


def test_two_process_pretraining_ends_bit_identical_on_both_ranks_and_resumes_exactly(runs):
    full, resumed, _, _ = runs
    recs = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2] and all(r["processes"] == 2 for r in recs)
    ckpt = load_checkpoint(full / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["config"]["batch_size"] == 32
    assert not any(k.startswith("module.") for k in ckpt["model"])
    rank0, rank1 = recs[-1]["weights_sha256"]
    assert rank0 == rank1 == state_digest(ckpt["model"])  # both ranks held exactly the weights rank 0 saved
    again = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert again["epoch"] == 2 and state_digest(again["model"]) == state_digest(ckpt["model"])
    assert [json.loads(line)["loss"] for line in (resumed / "metrics.jsonl").read_text().splitlines()] == \
        [r["loss"] for r in recs]


def test_a_two_process_checkpoint_evaluates_embeds_and_trains_in_one_process(runs, tmp_path):
    full, _, data, labels = runs
    result = evaluate(full, fractions=(1.0,), protocols=("knn",), baselines=False, device="cpu", progress=False)
    assert result["pretrain_epochs"] == 2 and result["splits"]["test"] == 52  # the run's 20% holdout
    assert result["results"][0]["knn"] > 0.3  # 10 classes: well above chance
    code = main(["embed", str(full), "--data", str(data), "--out", str(tmp_path / "f.npy"), "--device", "cpu"])
    assert code == 0 and np.load(tmp_path / "f.npy").shape == (256, 256)
    run = load_run(full)  # further training in one process: the method takes a step from the loaded weights
    method = run.method.train()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    loss, _ = method(method.make_batch(x, torch.Generator().manual_seed(0)))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in method.backbone.parameters())
    assert state_digest(before) == state_digest(load_checkpoint(full / "checkpoints" / "last.pt")["model"])


def test_resume_with_another_number_of_processes_is_a_one_line_error(runs, capsys):
    full, _, _, _ = runs
    code = main(["pretrain", "--resume", "--out", str(full), "--epochs", "3", "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and "trained on 2 process(es), not 1" in err[0], err
    with pytest.raises(SelfSupError, match="resume it with torchrun"):
        pretrain(Config(out=str(full), epochs=3), resume=True, progress=False)
    assert "epochs: 2" in (full / "config.yaml").read_text()  # refused before anything was written


def test_global_batchnorm_converts_in_place_keeps_names_and_skips_ema_teachers():
    from selfsup.methods import EMATeacher
    from selfsup.models.global_bn import GlobalBatchNorm, convert_batchnorm

    method = W.build("moco")
    params = {n: p for n, p in method.named_parameters()}
    plain = {k: v.clone() for k, v in method.state_dict().items()}
    convert_batchnorm(method, torch.device("cpu"), skip=(EMATeacher,))
    kinds = {n: type(m).__name__ for n, m in method.named_modules()}
    assert kinds["backbone.features.0.1"] == "GlobalBatchNorm" and kinds["projector.1"] == "GlobalBatchNorm"
    assert kinds["key_encoder.net.0.features.0.1"] == "BatchNorm2d"  # the teacher keeps per-process BN
    assert all(p is params[n] for n, p in method.named_parameters())  # the optimizer's and EMA's tensors
    fresh = W.build("moco")
    fresh.load_state_dict(method.state_dict(), strict=True)  # checkpoint names unchanged
    assert state_digest(fresh) == state_digest(plain)
    bn = torch.nn.BatchNorm2d(4).train()
    gbn = GlobalBatchNorm.from_batchnorm(torch.nn.BatchNorm2d(4)).train()
    x = torch.randn(8, 4, 3, 3)
    torch.testing.assert_close(gbn(x), bn(x))  # one process: exactly BatchNorm
    torch.testing.assert_close(gbn.running_var, bn.running_var)
