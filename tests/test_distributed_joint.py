"""BYOL, SimSiam, Barlow Twins, VICReg, MoCo v3 and SimCSE on 2 gloo processes (forked, tests/dist_joint_workers.py):
the loss and every gradient equal one process's on the global batch. Each of these losses reduces over the batch:
BYOL and SimSiam through BatchNorm (global, in BYOL's target too), Barlow Twins through the cross-correlation,
VICReg through the variance and covariance (both gathered with gradients), MoCo v3 through the gathered keys and
BatchNorm (global, in its momentum encoder too), SimCSE through its gathered keys (the second dropout passes; its
dropout masks are drawn per sentence, so each process holds its own rows'). The losses alone are also run through
the two broken gathers peers shipped, to show the comparison catches them. DINO's loss is per sample but its centre
is a mean over the global batch (all-reduced): its steps are compared the same way, and again with the centre
averaged over each process's rows only, which the comparison must catch."""
import pytest
import torch

import dist_joint_workers as W
from selfsup.distributed import state_digest
from selfsup.losses import barlow_twins, simcse_loss, vicreg

NAMES = list(W.METHODS) + list(W.TEXT_METHODS)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("joint")
    W.spawn(out / "store", out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def one_process(name: str, state: dict | None = None, steps=slice(None)) -> dict:
    """One process's record of the same steps on the global batches (from `state` when given)."""
    method = W.build(name)
    if state is not None:
        method.load_state_dict(state)
    return W.run_steps(method, method, W.global_batches(name=name)[steps], 0, 1)


def assert_same_step(rec: dict, ref: dict, step: int, ref_step: int, what: str) -> None:
    torch.testing.assert_close(rec["loss"][step], ref["loss"][ref_step], rtol=1e-5, atol=1e-7, msg=what)
    assert rec["grads"][step].keys() == ref["grads"][ref_step].keys()
    # Sums in another order: float rounding at 1e-5 of the largest gradient of the model. (Not of each tensor's
    # own: a bias feeding BatchNorm, or a centring loss, has a gradient that is 0 up to rounding, ~1e-8.)
    scale = max(float(g.abs().max()) for g in ref["grads"][ref_step].values())
    for p, g in ref["grads"][ref_step].items():
        torch.testing.assert_close(rec["grads"][step][p], g, rtol=1e-4, atol=1e-5 * scale, msg=f"{what}: {p}")


@pytest.mark.parametrize("name", NAMES)
def test_two_processes_give_the_loss_and_every_gradient_of_one_process_on_the_global_batch(ranks, name):
    ref = one_process(name)
    for r, rec in enumerate(ranks):
        assert_same_step(rec[name], ref, 0, 0, f"{name}, rank {r}, first step")
    # The second step from the state both processes reached (after an SGD step and, for BYOL, an EMA update).
    ref = one_process(name, ranks[0][name]["before"][1], slice(1, 2))
    for r, rec in enumerate(ranks):
        assert_same_step(rec[name], ref, 1, 0, f"{name}, rank {r}, second step")
    assert state_digest(ranks[0][name]["state"]) == state_digest(ranks[1][name]["state"])


def test_every_batchnorm_is_global_on_two_processes_byol_target_included(ranks):
    for name in W.METHODS:
        assert ranks[0][name]["norms"] == ["GlobalBatchNorm"], name  # no per-process BatchNorm left anywhere
    assert ranks[0]["byol"]["target_norms"] == ["GlobalBatchNorm"]
    assert ranks[0]["warnings"] == [] and ranks[1]["warnings"] == []


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg", "simcse"])
def test_loss_gradients_through_the_gather_equal_one_process_and_broken_gathers_do_not(ranks, name):
    z1, z2 = (z.clone().requires_grad_(True) for z in W.embeddings())
    loss = {"barlow_twins": barlow_twins, "vicreg": lambda a, c: vicreg(a, c)[0], "simcse": simcse_loss}[name](z1, z2)
    loss.backward()
    b = W.B // 2
    for r, rec in enumerate(ranks):
        value, g1, g2 = rec["loss_grads"][(name, "real")]
        if name == "barlow_twins":  # every process computes the one global loss
            torch.testing.assert_close(value, loss.detach(), rtol=1e-5, atol=0)
        if name == "simcse":  # each process its rows' mean: their mean is the global loss
            other = ranks[1 - r]["loss_grads"][(name, "real")][0]
            torch.testing.assert_close((value + other) / 2, loss.detach(), rtol=1e-5, atol=0)
        # Rank r's gradient is the sum over both processes' losses (the gather's backward); DDP's average then
        # halves it: g / 2 is the global loss's gradient for rank r's rows.
        torch.testing.assert_close(g1 / 2, z1.grad[r * b:(r + 1) * b], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(g2 / 2, z2.grad[r * b:(r + 1) * b], rtol=1e-4, atol=1e-7)
        for broken in ("local_slice", "plain"):  # the same comparison fails for both broken gathers
            _, b1, b2 = rec["loss_grads"][(name, broken)]
            with pytest.raises(AssertionError):  # in z1's gradient, or (SimCSE gathers only z2) in z2's
                torch.testing.assert_close(b1 / 2, z1.grad[r * b:(r + 1) * b], rtol=1e-2, atol=1e-6)
                torch.testing.assert_close(b2 / 2, z2.grad[r * b:(r + 1) * b], rtol=1e-2, atol=1e-6)


def test_dino_on_two_processes_equals_one_process_on_the_global_batch_centre_included(ranks):
    method = W.build_dino()
    ref = W.run_steps(method, method, W.dino_batches(), 0, 1, slicer=W.dino_local)
    for r, rec in enumerate(ranks):
        assert_same_step(rec["dino"], ref, 0, 0, f"dino, rank {r}, first step")
        # the centre after step 1 is the global batch's (every process's teacher rows), before step 2
        torch.testing.assert_close(rec["dino"]["before"][1]["center"], ref["before"][1]["center"], rtol=1e-5,
                                   atol=1e-7)
    assert float(ref["before"][1]["center"].abs().max()) > 1e-3  # the centre moved: the comparison has teeth
    method = W.build_dino()
    method.load_state_dict(ranks[0]["dino"]["before"][1])
    ref2 = W.run_steps(method, method, W.dino_batches()[1:2], 0, 1, slicer=W.dino_local)
    for r, rec in enumerate(ranks):
        assert_same_step(rec["dino"], ref2, 1, 0, f"dino, rank {r}, second step")
    assert state_digest(ranks[0]["dino"]["state"]) == state_digest(ranks[1]["dino"]["state"])
    assert "GlobalBatchNorm" in ranks[0]["dino"]["norms"]


def test_a_dino_centre_from_each_process_rows_alone_fails_the_same_comparison(ranks):
    method = W.build_dino()
    ref = W.run_steps(method, method, W.dino_batches(), 0, 1, slicer=W.dino_local)
    for r, rec in enumerate(ranks):
        assert_same_step(rec["dino_local_centre"], ref, 0, 0, f"rank {r}, first step")  # the centre is not used yet
        with pytest.raises(AssertionError):
            torch.testing.assert_close(rec["dino_local_centre"]["before"][1]["center"], ref["before"][1]["center"],
                                       rtol=1e-5, atol=1e-7)
    assert state_digest(ranks[0]["dino_local_centre"]["state"]) != state_digest(ranks[1]["dino_local_centre"]["state"])


@pytest.mark.parametrize("broken", ["local_keys", "plain_all_reduce"])
def test_mocov3_comparison_fails_with_keys_left_per_process_or_a_batchnorm_sum_autograd_cannot_see(ranks, broken):
    """MoCo v3's keys are constants (the momentum encoder takes no gradient), so its loss gathers them without a
    backward; what must carry gradients across processes is its global BatchNorm. Each break changes the step."""
    ref = one_process("mocov3", steps=slice(0, 1))
    for rec in ranks:
        with pytest.raises(AssertionError):
            assert_same_step(rec["mocov3_broken"][broken], ref, 0, 0, broken)
