"""Losses against their formulas, written independently with F.cross_entropy."""
import torch
import torch.nn.functional as F

from selfsup.losses import info_nce, nt_xent, reconstruction_mse


def reference_nt_xent(z1, z2, t):
    """SimCLR's loss on the (2N x 2N) similarity matrix: row i's positive is its pair, self-similarity excluded."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / t
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def test_nt_xent_matches_reference():
    g = torch.Generator().manual_seed(0)
    for n, d, t in [(8, 16, 0.5), (32, 128, 0.1), (5, 3, 1.0)]:
        z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        torch.testing.assert_close(nt_xent(z1, z2, t), reference_nt_xent(z1, z2, t), rtol=1e-5, atol=1e-5)


def test_nt_xent_gradients_match_reference():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(16, 8, generator=g, requires_grad=True)
    b = torch.randn(16, 8, generator=g, requires_grad=True)
    ga = torch.autograd.grad(nt_xent(a, b, 0.2), [a, b])
    gb = torch.autograd.grad(reference_nt_xent(a, b, 0.2), [a, b])
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_nt_xent_prefers_aligned_pairs():
    z = torch.randn(16, 32)
    aligned = nt_xent(z, z + 0.01 * torch.randn_like(z), 0.1)
    shuffled = nt_xent(z, z[torch.randperm(16)], 0.1)
    assert aligned < shuffled - 1.0


def test_info_nce_matches_reference():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    queue = F.normalize(torch.randn(64, 16, generator=g), dim=1)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ queue.T], 1) / 0.07
    ref = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(info_nce(q, k, queue, 0.07), ref)


def test_info_nce_gives_no_gradient_to_keys():
    q = torch.randn(4, 8, requires_grad=True)
    k = torch.randn(4, 8, requires_grad=True)
    info_nce(q, k, F.normalize(torch.randn(16, 8), dim=1)).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None


def test_reconstruction_mse():
    a, b = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(reconstruction_mse(a, b), ((a - b) ** 2).mean())


def test_losses_stay_fp32_under_bf16_autocast():
    # Inside autocast a plain matmul runs in bf16; the losses must still give their fp32 values.
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    queue = F.normalize(torch.randn(256, 32, generator=g), dim=1)
    exact = (nt_xent(z1, z2, 0.1), info_nce(z1, z2, queue, 0.07), reconstruction_mse(z1.sigmoid(), z2.sigmoid()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = z1 @ torch.eye(32), z2 @ torch.eye(32)  # bf16, as a projector's output would be
        assert a.dtype == torch.bfloat16
        mixed = (nt_xent(z1, z2, 0.1), info_nce(z1, z2, queue, 0.07), reconstruction_mse(z1.sigmoid(), z2.sigmoid()))
        from_bf16 = nt_xent(a, b, 0.1)
    for e, m in zip(exact, mixed):
        assert m.dtype == torch.float32
        torch.testing.assert_close(m, e, rtol=1e-6, atol=1e-6)
    # bf16 inputs are only rounded once (to 8 bits of mantissa), not again inside the loss.
    torch.testing.assert_close(from_bf16, nt_xent(a.float(), b.float(), 0.1), rtol=1e-6, atol=1e-6)


def test_fp32_finds_the_device_of_keyword_tensors(monkeypatch):
    # The autocast it turns off must be the device's own: a keyword-only CUDA call once turned off the CPU's.
    from selfsup.losses import precision

    meta = torch.empty(2, device="meta")
    assert precision.device_type(0.1, meta) == "meta" and precision.device_type(0.1) == "cpu"
    calls = []
    monkeypatch.setattr(precision, "device_type", lambda *values: calls.append(values) or "cpu")
    nt_xent(z1=torch.randn(4, 8), z2=torch.randn(4, 8), temperature=0.1)
    assert sum(torch.is_tensor(v) for v in calls[0]) == 2  # the outer, keyword-only call saw both tensors
