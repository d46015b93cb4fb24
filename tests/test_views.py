"""Batched view ops against torchvision's functional ops applied per sample with the same parameters."""
import math

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch.testing import assert_close

from selfsup.views import ops
from selfsup.views.preview import save_preview
from selfsup.data import dataset_stats, image_spec
from selfsup.models import Encoder
from selfsup.views.recipes import (SimCLRViews, byol_views, default_blur_kernel, finetune_views, moco_v2_views,
                                   simclr_views)

B = 6


def batch(c, h=28, w=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, c, h, w, generator=g)


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def per_sample(fn, x, *params):
    """Loop the torchvision op over samples, params given as (B,) tensors."""
    return torch.stack([fn(x[i], *[p[i].item() for p in params]) for i in range(x.shape[0])])


CHANNELS = pytest.mark.parametrize("c", [1, 3])


# ------------------------------------------------------------------------------------ crop

@CHANNELS
@pytest.mark.parametrize("hw", [(28, 28), (20, 32)])
@pytest.mark.parametrize("size", [28, 16])
def test_resized_crop_matches_torchvision(c, hw, size):
    x = batch(c, *hw)
    top, left, h, w = ops.random_resized_crop_params(B, hw[0], hw[1], scale=(0.08, 1.0), generator=gen())
    got = ops.resized_crop(x, top, left, h, w, size)
    assert got.shape == (B, c, size, size)
    want = per_sample(lambda img, t, l, hh, ww: TF.resized_crop(img, t, l, hh, ww, [size, size], antialias=False),
                      x, top, left, h, w)
    assert_close(got, want, atol=1e-5, rtol=0)


@CHANNELS
def test_resized_crop_upsampled_matches_antialias(c):
    # crops of a 28px image resized back to 28px are upsampled: antialias has no effect
    x = batch(c)
    top, left, h, w = ops.random_resized_crop_params(B, 28, 28, scale=(0.2, 1.0), generator=gen(3))
    got = ops.resized_crop(x, top, left, h, w, 28)
    want = per_sample(lambda img, t, l, hh, ww: TF.resized_crop(img, t, l, hh, ww, [28, 28], antialias=True),
                      x, top, left, h, w)
    assert_close(got, want, atol=1e-5, rtol=0)


def test_resized_crop_to_a_non_square_size_matches_torchvision():
    # Non-square images keep their shape in training views, as evaluation sees them (H x W, not W x W).
    x = batch(3, 24, 30)
    top, left, h, w = ops.random_resized_crop_params(B, 24, 30, scale=(0.2, 1.0), generator=gen(5))
    got = ops.resized_crop(x, top, left, h, w, (24, 30))
    assert got.shape == (B, 3, 24, 30)
    want = per_sample(lambda img, t, l, hh, ww: TF.resized_crop(img, t, l, hh, ww, [24, 30], antialias=False),
                      x, top, left, h, w)
    assert_close(got, want, atol=1e-5, rtol=0)


def test_resized_crop_explicit_boxes():
    x = batch(3, 24, 30)
    top = torch.tensor([0, 5, 0, 23, 2, 0])
    left = torch.tensor([0, 3, 29, 0, 7, 0])
    h = torch.tensor([24, 10, 24, 1, 3, 7])
    w = torch.tensor([30, 13, 1, 30, 20, 30])
    got = ops.resized_crop(x, top, left, h, w, 17)
    want = per_sample(lambda img, t, l, hh, ww: TF.resized_crop(img, t, l, hh, ww, [17, 17], antialias=False),
                      x, top, left, h, w)
    assert_close(got, want, atol=1e-5, rtol=0)


def test_random_resized_crop_aspect_ratio_is_log_uniform():
    # torchvision draws log(ratio) uniformly in [log 3/4, log 4/3]: mean 0, quartiles at +-0.1438. A uniform draw
    # of the ratio itself has mean log-ratio +0.022 and quartiles at -0.110 / +0.172. Scales up to 0.5 of a
    # large image accept every first try, so the draw is seen without rejection or rounding.
    n = 20000
    _, _, h, w = ops.random_resized_crop_params(n, 1000, 1000, scale=(0.08, 0.5), generator=gen(3))
    log_r = (w.double() / h.double()).log()
    assert abs(log_r.mean().item()) < 0.006  # 5 standard errors
    q1, q3 = torch.quantile(log_r, torch.tensor([0.25, 0.75], dtype=torch.float64)).tolist()
    assert q1 == pytest.approx(-0.1438, abs=0.01) and q3 == pytest.approx(0.1438, abs=0.01)


@pytest.mark.parametrize("hw", [(28, 28), (20, 50), (64, 16)])
@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0), (0.5, 1.0)])
def test_random_resized_crop_params_bounds(hw, scale):
    H, W = hw
    n = 4000
    top, left, h, w = ops.random_resized_crop_params(n, H, W, scale=scale, generator=gen(7))
    for t in (top, left, h, w):
        assert t.dtype == torch.long and t.shape == (n,)
    assert (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    # accepted tries obey the bounds up to integer rounding of w and h; fallback is the clamped centre crop
    area = (h * w).double() / (H * W)
    ratio = w.double() / h.double()
    fallback = (top == (H - h) // 2) & (left == (W - w) // 2)
    slack = 1.0 / min(H, W)  # rounding each side by <= 0.5 px
    inside = ((area >= scale[0] * (1 - 4 * slack)) & (area <= 1.0)
              & (ratio >= 0.75 * (1 - 4 * slack)) & (ratio <= 4 / 3 * (1 + 4 * slack)))
    assert (inside | fallback).all()
    if H == W:
        assert inside.float().mean() > 0.9
    # same distribution as torchvision's get_params (mean area and ratio, and fallback rate)
    torch.manual_seed(0)
    ref = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(1, H, W), list(scale), [3 / 4, 4 / 3])
                        for _ in range(2000)], dtype=torch.float64)
    ref_area = ref[:, 2] * ref[:, 3] / (H * W)
    ref_ratio = ref[:, 3] / ref[:, 2]
    assert abs(area.mean() - ref_area.mean()) < 0.02
    assert abs(ratio.mean() - ref_ratio.mean()) < 0.03
    assert abs(area.std() - ref_area.std()) < 0.02


def test_random_resized_crop_fallback_centre():
    # an impossible ratio range forces the fallback: centre crop clamped by the ratio
    top, left, h, w = ops.random_resized_crop_params(5, 20, 50, scale=(0.99, 1.0), ratio=(0.5, 0.6),
                                                     generator=gen())
    assert (h == 20).all() and (w == round(20 * 0.6)).all()
    assert (top == 0).all() and (left == (50 - 12) // 2).all()


def test_random_resized_crop_returns_params():
    x = batch(1)
    out, (top, left, h, w) = ops.random_resized_crop(x, 14, generator=gen(), return_params=True)
    assert out.shape == (B, 1, 14, 14)
    assert_close(out, ops.resized_crop(x, top, left, h, w, 14))


# ------------------------------------------------------------------------------------ flip

@CHANNELS
def test_hflip(c):
    x = batch(c, 20, 28)
    mask = torch.tensor([True, False, True, True, False, False])
    got = ops.hflip(x, mask)
    want = torch.stack([TF.hflip(x[i]) if mask[i] else x[i] for i in range(B)])
    assert_close(got, want, atol=0, rtol=0)
    assert torch.equal(ops.random_hflip(x, 0.0, generator=gen()), x)
    assert torch.equal(ops.random_hflip(x, 1.0, generator=gen()), x.flip(-1))


# ------------------------------------------------------------------------------------ colour: tests/test_jitter.py

def factors(lo, hi, seed=2):
    return torch.rand(B, generator=gen(seed)) * (hi - lo) + lo


# ------------------------------------------------------------------------------------ grayscale

def test_to_grayscale_rgb():
    x = batch(3)
    mask = torch.tensor([True, False, True, False, False, True])
    got = ops.to_grayscale(x, mask)
    want = torch.stack([TF.rgb_to_grayscale(x[i], num_output_channels=3) if mask[i] else x[i] for i in range(B)])
    assert_close(got, want, atol=1e-6, rtol=0)


def test_grayscale_noop_on_one_channel():
    x = batch(1)
    assert torch.equal(ops.to_grayscale(x, torch.ones(B, dtype=torch.bool)), x)
    assert torch.equal(ops.random_grayscale(x, 1.0, generator=gen()), x)


# ------------------------------------------------------------------------------------ blur

@CHANNELS
@pytest.mark.parametrize("k", [3, 5])
def test_gaussian_blur(c, k):
    x = batch(c, 20, 28)
    sigma = factors(0.1, 2.0)
    got = ops.gaussian_blur(x, sigma, k)
    want = per_sample(lambda img, s: TF.gaussian_blur(img, [k, k], [s, s]), x, sigma)
    assert_close(got, want, atol=1e-5, rtol=0)


def test_random_gaussian_blur_mask():
    x = batch(3)
    assert torch.equal(ops.random_gaussian_blur(x, 0.0, kernel_size=3, generator=gen()), x)
    out = ops.random_gaussian_blur(x, 1.0, kernel_size=3, generator=gen())
    assert not torch.allclose(out, x)


# ------------------------------------------------------------------------------------ solarize / normalise

@CHANNELS
def test_solarize(c):
    x = batch(c)
    mask = torch.tensor([True, False, True, True, False, True])
    got = ops.solarize(x, 0.5, mask)
    want = torch.stack([TF.solarize(x[i], 0.5) if mask[i] else x[i] for i in range(B)])
    assert_close(got, want, atol=0, rtol=0)


@CHANNELS
def test_normalize(c):
    x = batch(c)
    mean, std = [0.3, 0.4, 0.5][:c], [0.2, 0.25, 0.3][:c]
    assert_close(ops.normalize(x, mean, std), per_sample(lambda img: TF.normalize(img, mean, std), x),
                 atol=1e-6, rtol=0)


def test_to_float():
    x = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)
    y = ops.to_float(x)
    assert y.dtype == torch.float32
    assert_close(y, torch.tensor([[[[0.0, 128 / 255, 1.0]]]]))


# ------------------------------------------------------------------------------------ recipes

def uint8_batch(n, c, hw=28, seed=0):
    return torch.randint(0, 256, (n, c, hw, hw), generator=gen(seed), dtype=torch.uint8)


@CHANNELS
def test_recipe_determinism_and_shape(c):
    x = uint8_batch(B, c, 32)
    mean, std = [0.5] * c, [0.25] * c
    recipe = SimCLRViews(24, mean, std, blur_p=0.5, solarize_p=0.2)
    a, b = recipe(x, gen(5)), recipe(x, gen(5))
    assert a.shape == (B, c, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, recipe(x, gen(6)))
    g = gen(5)
    v1, v2 = recipe(x, g), recipe(x, g)  # two draws from one generator differ
    assert not torch.equal(v1, v2)
    # normalised: de-normalised values lie in [0,1]
    d = a * 0.25 + 0.5
    assert d.min() >= -1e-5 and d.max() <= 1 + 1e-5


def test_random_ops_deterministic():
    x = batch(3)
    for fn in (lambda g: ops.random_resized_crop(x, 20, generator=g),
               lambda g: ops.random_color_jitter(x, generator=g),
               lambda g: ops.random_gaussian_blur(x, 0.5, kernel_size=5, generator=g),
               lambda g: ops.random_hflip(x, 0.5, generator=g),
               lambda g: ops.random_grayscale(x, 0.5, generator=g),
               lambda g: ops.random_solarize(x, 0.5, generator=g)):
        assert torch.equal(fn(gen(9)), fn(gen(9)))


def test_presets():
    mean, std = [0.3], [0.3]
    s28, s96 = simclr_views(28, mean, std), simclr_views(96, mean, std)
    assert s28.crop_scale == (0.2, 1.0) and s28.blur_p == 0.0
    assert s96.crop_scale == (0.08, 1.0) and s96.blur_p == 0.5
    assert s96.jitter == (0.8, 0.8, 0.8, 0.2)  # SimCLR's ImageNet strength from 64 px; CIFAR's below
    assert moco_v2_views(96, mean, std).jitter == (0.4, 0.4, 0.4, 0.1)
    wide = simclr_views((20, 70), mean, std)  # judged by the shorter side; views keep H x W
    x_wide = torch.randint(0, 256, (2, 1, 20, 70), generator=gen(), dtype=torch.uint8)
    assert wide.crop_scale == (0.2, 1.0) and wide(x_wide, gen()).shape == (2, 1, 20, 70)
    assert s28.jitter == (0.4, 0.4, 0.4, 0.1) and s28.jitter_p == 0.8 and s28.gray_p == 0.2 and s28.flip_p == 0.5
    assert moco_v2_views(96, mean, std).crop_scale == (0.2, 1.0)
    strong = simclr_views(28, mean, std, crop_min=0.08, jitter_strength=1.0)  # the strength settings win
    assert strong.crop_scale == (0.08, 1.0) and strong.jitter == (0.8, 0.8, 0.8, 0.2)
    assert simclr_views(96, mean, std, jitter_strength=0).jitter_p == 0.0
    v1, v2 = byol_views(28, mean, std)
    assert (v1.blur_p, v2.blur_p, v1.solarize_p, v2.solarize_p) == (1.0, 0.1, 0.0, 0.2)
    x = uint8_batch(4, 1)
    for r in (s28, v1, v2, finetune_views(28)):
        out = r(x, gen())
        assert out.shape == (4, 1, 28, 28) and torch.isfinite(out).all()
    ft = finetune_views(28)(x, gen())  # fine-tuning views stay in [0, 1]: the Encoder normalises them
    assert ft.min() >= 0 and ft.max() <= 1
    assert [default_blur_kernel(s) for s in (28, 64, 96, 224)] == [3, 7, 9, 23]


def test_encoder_input_is_normalised():
    x = uint8_batch(512, 3, 16)
    mean, std = dataset_stats(x)
    backbone = torch.nn.Flatten()
    backbone.feature_dim = 3 * 16 * 16
    enc = Encoder(backbone, image_spec(x.shape[1:], mean, std))
    out = enc.prepare(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    assert_close(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    assert_close(enc.prepare(x.float() / 255), out)  # an augmented float batch in [0, 1] is prepared the same way
    assert enc(x).shape == (512, 3 * 16 * 16)


def test_dataset_stats_matches_direct_and_is_fast():
    x = torch.randint(0, 256, (60000, 1, 28, 28), generator=gen(), dtype=torch.uint8)
    mean, std = dataset_stats(x)
    f = x[:5000].float() / 255
    assert len(mean) == 1 and len(std) == 1
    assert math.isclose(mean[0], float(x.double().mean() / 255), abs_tol=1e-6)
    assert math.isclose(std[0], float(f.std()), abs_tol=3e-3)
    y = torch.randint(0, 256, (100, 3, 8, 8), generator=gen(), dtype=torch.uint8)
    m3, s3 = dataset_stats(y, chunk=7)
    ref = y.double() / 255
    assert_close(torch.tensor(m3, dtype=torch.float64), ref.mean(dim=(0, 2, 3)), atol=1e-9, rtol=0)
    assert_close(torch.tensor(s3, dtype=torch.float64), ref.std(dim=(0, 2, 3), unbiased=False), atol=1e-9, rtol=0)


# ------------------------------------------------------------------------------------ preview

@CHANNELS
def test_preview_png(tmp_path, c):
    from PIL import Image

    x = uint8_batch(8, c)
    mean, std = [0.5] * c, [0.25] * c
    path = save_preview(x, simclr_views(28, mean, std), tmp_path / "sub" / "views.png", n=4, n_views=2,
                        generator=gen(), mean=mean, std=std)
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as im:
        im.load()
        w, h = im.size
    # 4 rows x 3 columns (original + 2 views): wider than tall is impossible, taller than wide expected
    assert h > w
    assert 1.0 < h / w < 2.0


def test_simclr_strength_settings_reach_its_views():
    from selfsup.methods.registry import get_method
    from selfsup.methods.hparams import parse_hparams
    cls = get_method("simclr")
    with pytest.raises(Exception, match="crop_min"):
        parse_hparams("simclr", cls.Hparams, {"crop_min": 0})
    spec = image_spec((1, 16, 16), [0.5], [0.25])
    m = cls(spec, parse_hparams("simclr", cls.Hparams, {"crop_min": 0.5, "jitter_strength": 0.25}), "small_cnn")
    assert m.view_recipe.crop_scale == (0.5, 1.0) and m.view_recipe.jitter == (0.2, 0.2, 0.2, 0.05)
    assert cls(spec, cls.Hparams(), "small_cnn").view_recipe.crop_scale == (0.2, 1.0)  # None: the size rule
