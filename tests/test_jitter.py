"""Colour jitter (selfsup/views/jitter.py) against torchvision: its functional ops and ColorJitter itself, applied
sample by sample with the same factors and order, in both ways of selecting rows (gather and masked)."""
import itertools

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch.testing import assert_close

from selfsup.views import jitter, ops

B = 6
CHANNELS = pytest.mark.parametrize("c", [1, 3])
GATHER = pytest.mark.parametrize("gather", [True, False])
_TF_JITTER = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def batch(c, n=B, h=28, w=28, seed=0):
    return torch.rand(n, c, h, w, generator=gen(seed))


def factors(lo, hi, seed=2, n=B):
    return torch.rand(n, generator=gen(seed)) * (hi - lo) + lo


def per_sample(fn, x, *params):
    """Loop the torchvision op over samples, params given as (B,) tensors."""
    return torch.stack([fn(x[i], *[p[i].item() for p in params]) for i in range(x.shape[0])])


def tricky_pixels(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, 8, 8) images where each row mixes random pixels with greys, black, white, pure and secondary
    colours and ties for the max channel (r = g, g = b, r = b), the cases where rgb -> hsv picks a branch."""
    x = batch(3, n, 8, 8, seed)
    special = torch.tensor([[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0],
                            [0, 1, 1], [1, 0, 1], [0.7, 0.7, 0.2], [0.2, 0.7, 0.7], [0.7, 0.2, 0.7],
                            [0.9, 0.3, 0.3001], [0.3001, 0.3, 0.9], [0.3, 0.9, 0.3001], [1e-7, 0, 0]])
    x[:, :, 0, :] = special[:8].T.unsqueeze(0)
    x[:, :, 1, :] = special[8:].T.unsqueeze(0)
    return x


# ------------------------------------------------------------------------------------ single ops

@CHANNELS
def test_adjust_brightness(c):
    x, f = batch(c), factors(0.0, 2.0)
    assert_close(ops.adjust_brightness(x, f), per_sample(TF.adjust_brightness, x, f), atol=1e-6, rtol=0)


@CHANNELS
def test_adjust_contrast(c):
    x, f = batch(c), factors(0.0, 2.0)
    assert_close(ops.adjust_contrast(x, f), per_sample(TF.adjust_contrast, x, f), atol=1e-6, rtol=0)


@CHANNELS
def test_adjust_saturation(c):
    x, f = batch(c), factors(0.0, 2.0)
    got = ops.adjust_saturation(x, f)
    assert_close(got, per_sample(TF.adjust_saturation, x, f), atol=1e-6, rtol=0)
    if c == 1:
        assert torch.equal(got, x)


@CHANNELS
def test_adjust_hue(c):
    x, f = batch(c), factors(-0.5, 0.5)
    got = ops.adjust_hue(x, f)
    assert_close(got, per_sample(TF.adjust_hue, x, f), atol=1e-5, rtol=0)
    if c == 1:
        assert torch.equal(got, x)


def test_adjust_hue_wraps_around_and_picks_torchvision_branch():
    # Shifts that carry hues across 0 / 1 both ways (the full +-0.5), on greys, pure colours and max-channel ties.
    h = torch.tensor([-0.5, -0.49, -0.26, -0.01, 0.0, 0.01, 0.17, 0.26, 0.49, 0.5])
    x = tricky_pixels(len(h))
    got = ops.adjust_hue(x, h)
    assert_close(got, per_sample(TF.adjust_hue, x, h), atol=1e-5, rtol=0)
    grey = (x.amax(1) == x.amin(1)).unsqueeze(1).expand_as(x)
    assert torch.equal(got[grey], x[grey])  # greys are exactly unchanged, as in torchvision


# ------------------------------------------------------------------------------------ jitter, factors and order

def reference_jitter(x, fb, fc, fs, fh, order, mask):
    """torchvision's ColorJitter applied to each sample, its get_params replaced by that sample's draws
    (None where the op is off, as ColorJitter itself passes None for an identity range)."""
    out = []
    for i in range(x.shape[0]):
        if not mask[i]:
            out.append(x[i])
            continue
        drawn = [None if f is None else f[i].item() for f in (fb, fc, fs, fh)]
        cj = T.ColorJitter()
        cj.get_params = lambda *_, i=i, drawn=drawn: (order[i], *drawn)
        out.append(cj(x[i]))
    return torch.stack(out)


@CHANNELS
@GATHER
def test_color_jitter_every_order_matches_colorjitter(c, gather):
    # all 24 orders, twice (once per sample kept or not), strengths as SimCLR's ImageNet recipe (0.8, 0.8, 0.8, 0.2)
    order = torch.tensor(list(itertools.permutations(range(4))) * 2)
    n = len(order)
    x = tricky_pixels(n, 3)[:, :c]
    fb, fc, fs = factors(0.2, 1.8, 3, n), factors(0.2, 1.8, 4, n), factors(0.2, 1.8, 5, n)
    fh = factors(-0.2, 0.2, 6, n)
    mask = torch.arange(n) % 7 != 3
    got = ops.color_jitter(x, fb, fc, fs, fh, order, mask, gather=gather)
    assert_close(got, reference_jitter(x, fb, fc, fs, fh, order, mask), atol=1e-5, rtol=0)
    assert torch.equal(got[~mask], x[~mask])  # not selected: untouched


@GATHER
@pytest.mark.parametrize("off", [(0,), (3,), (0, 2), (1, 3), (0, 1, 2)])
def test_color_jitter_with_ops_off_matches_colorjitter(off, gather):
    n = 24
    order = torch.tensor(list(itertools.permutations(range(4))))
    x = batch(3, n, 8, 8)
    fs = [factors(0.5, 1.5, 3, n), factors(0.5, 1.5, 4, n), factors(0.5, 1.5, 5, n), factors(-0.1, 0.1, 6, n)]
    fs = [None if k in off else f for k, f in enumerate(fs)]
    mask = torch.ones(n, dtype=torch.bool)
    got = ops.color_jitter(x, *fs, order, mask, gather=gather)
    assert_close(got, reference_jitter(x, *fs, order, mask), atol=1e-5, rtol=0)


@CHANNELS
def test_gather_and_masked_agree(c):
    x = batch(c, 64, 16, 16)
    _, p = ops.random_color_jitter(x, 0.8, 0.8, 0.8, 0.2, generator=gen(), return_params=True)
    args = (x, p["brightness"], p["contrast"], p["saturation"], p["hue"], p["order"], p["apply_mask"])
    assert_close(ops.color_jitter(*args, gather=True), ops.color_jitter(*args, gather=False), atol=1e-6, rtol=0)


def test_color_jitter_order_matters():
    x = batch(1)
    f_b, f_c = torch.full((B,), 1.4), torch.full((B,), 0.5)
    one, zero = torch.ones(B), torch.zeros(B)
    bc = ops.color_jitter(x, f_b, f_c, one, zero, torch.tensor([[0, 1, 2, 3]] * B))
    cb = ops.color_jitter(x, f_b, f_c, one, zero, torch.tensor([[1, 0, 2, 3]] * B))
    assert not torch.allclose(bc, cb)


def test_color_jitter_leaves_its_input_alone():
    x = batch(3)
    before = x.clone()
    _, p = ops.random_color_jitter(x, generator=gen(), return_params=True)
    for gather in (True, False):
        ops.color_jitter(x, p["brightness"], p["contrast"], p["saturation"], p["hue"], p["order"],
                         torch.ones(B, dtype=torch.bool), gather=gather)
        assert torch.equal(x, before)


# ------------------------------------------------------------------------------------ the random jitter

@CHANNELS
def test_random_color_jitter_params(c):
    x = batch(c)
    out, p = ops.random_color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=0.8, generator=gen(), return_params=True)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert ((p["brightness"] >= 0.6) & (p["brightness"] <= 1.4)).all()
    assert (p["hue"].abs() <= 0.1).all()
    assert torch.equal(p["order"].sort(dim=1).values, torch.arange(4).expand(B, 4))
    assert_close(out, ops.color_jitter(x, p["brightness"], p["contrast"], p["saturation"], p["hue"], p["order"],
                                       p["apply_mask"]))
    assert_close(out, reference_jitter(x, p["brightness"], p["contrast"], p["saturation"], p["hue"], p["order"],
                                       p["apply_mask"]), atol=1e-5, rtol=0)
    assert torch.equal(ops.random_color_jitter(x, p=0.0, generator=gen()), x)


def _refuse(*_args, **_kwargs):
    raise AssertionError("an op whose range is the identity was computed")


def test_identity_ranges_compute_nothing(monkeypatch):
    x = batch(3)
    hue_on = ops.random_color_jitter(x, 0.4, 0.4, 0.4, 0.1, generator=gen())
    monkeypatch.setattr(jitter, "_rotate_hue", _refuse)
    with pytest.raises(AssertionError, match="identity"):  # the patch is in the path the jitter takes
        ops.random_color_jitter(x, 0.4, 0.4, 0.4, 0.1, generator=gen())
    hue_off = ops.random_color_jitter(x, 0.4, 0.4, 0.4, 0.0, generator=gen())  # hue = 0: no rotation at all
    assert not torch.allclose(hue_off, hue_on)
    ops.random_color_jitter(batch(1), 0.4, 0.4, 0.4, 0.1, generator=gen())  # one channel: no hue either
    monkeypatch.setattr(jitter, "_blend_ops", _refuse)
    assert torch.equal(ops.random_color_jitter(x, 0.0, 0.0, 0.0, 0.0, generator=gen()), x)


def test_identity_range_keeps_the_draws():
    # Turning an op off changes no other sample's factors or order: the generator advances the same.
    x = batch(3)
    _, on = ops.random_color_jitter(x, 0.4, 0.4, 0.4, 0.1, generator=gen(), return_params=True)
    _, off = ops.random_color_jitter(x, 0.4, 0.0, 0.4, 0.0, generator=gen(), return_params=True)
    for k in ("brightness", "saturation", "order", "apply_mask"):
        assert torch.equal(on[k], off[k])


def test_one_channel_runs_brightness_and_contrast_only(monkeypatch):
    # torchvision leaves one channel unchanged under saturation and hue: they are not computed at all
    seen = []
    blend = jitter._blend_ops

    def recording(x, op, f, inplace=False):
        seen.append(op.clone())
        return blend(x, op, f, inplace)

    monkeypatch.setattr(jitter, "_blend_ops", recording)
    monkeypatch.setattr(jitter, "_rotate_hue", _refuse)
    ops.random_color_jitter(batch(1), 0.4, 0.4, 0.4, 0.1, p=1.0, generator=gen())
    assert len(seen) == 2 and set(torch.cat(seen).tolist()) == {jitter.BRIGHTNESS, jitter.CONTRAST}
