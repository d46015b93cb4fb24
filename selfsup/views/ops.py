"""Batched view ops on the device with per-sample parameters; each equals torchvision's functional op per sample."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float32 [0,1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) * (hi - lo) + lo


def _bmask(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


def resized_crop(x: torch.Tensor, top, left, height, width, size: int) -> torch.Tensor:
    """Crop box (top,left,height,width) of each sample, bilinearly resized to size x size (one grid_sample)."""
    b, _, h_in, w_in = x.shape
    dev = x.device
    o = torch.arange(size, device=dev, dtype=torch.float32) + 0.5

    def axis(start, length, full):
        length = length.to(dev, torch.float32).view(-1, 1)
        src = (o.view(1, -1) * length / size - 0.5).clamp(min=0)
        src = torch.minimum(src, length - 1)  # interpolate clamps to the crop's last pixel
        return ((start.to(dev, torch.float32).view(-1, 1) + src + 0.5) / full) * 2 - 1

    gy = axis(top, height, h_in)
    gx = axis(left, width, w_in)
    grid = torch.stack([gx.view(b, 1, size).expand(b, size, size), gy.view(b, size, 1).expand(b, size, size)], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop_params(b: int, h: int, w: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                               generator: torch.Generator | None = None, tries: int = 10):
    """torchvision's RandomResizedCrop.get_params, vectorised: each sample takes its first valid of 10 tries."""
    g = generator
    dev = g.device if g is not None else torch.device("cpu")
    area = h * w
    target = area * (torch.rand(b, tries, generator=g, device=dev) * (scale[1] - scale[0]) + scale[0])
    logr = torch.rand(b, tries, generator=g, device=dev) * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0])
    ar = torch.exp(logr)
    cw = torch.round(torch.sqrt(target * ar))
    ch = torch.round(torch.sqrt(target / ar))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.argmax(ok.int(), dim=1)
    any_ok = ok.any(dim=1)
    cw = cw.gather(1, first[:, None]).squeeze(1)
    ch = ch.gather(1, first[:, None]).squeeze(1)
    # Fallback (no try fit): centre crop clamped to the ratio range, as torchvision does.
    in_ratio = w / h
    if in_ratio < min(ratio):
        fw, fh = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = h, int(round(h * max(ratio)))
    else:
        fw, fh = w, h
    cw = torch.where(any_ok, cw, torch.full_like(cw, fw)).long()
    ch = torch.where(any_ok, ch, torch.full_like(ch, fh)).long()
    u1 = torch.rand(b, generator=g, device=dev)
    u2 = torch.rand(b, generator=g, device=dev)
    top = torch.floor(u1 * (h - ch + 1)).long()
    left = torch.floor(u2 * (w - cw + 1)).long()
    top = torch.where(any_ok, top, (h - ch) // 2)
    left = torch.where(any_ok, left, (w - cw) // 2)
    return top, left, ch, cw


def random_resized_crop(x, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None):
    """Random resized crop of every sample with its own box."""
    top, left, h, w = random_resized_crop_params(x.shape[0], x.shape[-2], x.shape[-1], scale, ratio, generator)
    return resized_crop(x, top, left, h, w, size)


def hflip(x: torch.Tensor, flip_mask: torch.Tensor) -> torch.Tensor:
    """Mirror the flagged samples left-right."""
    return torch.where(_bmask(flip_mask), x.flip(-1), x)


def random_hflip(x, p: float = 0.5, generator=None):
    """Mirror each sample with probability p."""
    return hflip(x, torch.rand(x.shape[0], generator=generator, device=x.device) < p)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (torchvision's weights), keeping one channel."""
    if x.shape[1] == 1:
        return x
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(a, b, ratio):
    r = ratio.view(-1, 1, 1, 1)
    return (r * a + (1 - r) * b).clamp(0, 1)


def adjust_brightness(x, f):
    """x * f, clamped to [0,1]."""
    return _blend(x, torch.zeros_like(x), f)


def adjust_contrast(x, f):
    """Blend with the mean of the grayscale image."""
    mean = rgb_to_gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, f)


def adjust_saturation(x, f):
    """Blend with the grayscale image; unchanged for one channel."""
    if x.shape[1] == 1:
        return x
    return _blend(x, rgb_to_gray(x), f)


def _rgb2hsv(img):
    r, g, b = img.unbind(dim=-3)
    maxc = torch.max(img, dim=-3).values
    minc = torch.min(img, dim=-3).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = (hr + hg + hb) / 6.0 + 1.0
    h = torch.fmod(h, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv2rgb(img):
    h, s, v = img.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = (h * 6.0) - i
    i = i.to(dtype=torch.int32)
    p = torch.clamp((v * (1.0 - s)), 0.0, 1.0)
    q = torch.clamp((v * (1.0 - s * f)), 0.0, 1.0)
    t = torch.clamp((v * (1.0 - s * (1.0 - f))), 0.0, 1.0)
    i = i % 6
    mask = i.unsqueeze(dim=-3) == torch.arange(6, device=i.device).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=-3)
    a2 = torch.stack((t, v, v, q, p, p), dim=-3)
    a3 = torch.stack((p, p, t, v, v, q), dim=-3)
    a4 = torch.stack((a1, a2, a3), dim=-4)
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(dtype=img.dtype), a4)


def adjust_hue(x, h):
    """Rotate hue by h (in [-0.5, 0.5]) through HSV; unchanged for one channel."""
    if x.shape[1] == 1:
        return x
    hsv = _rgb2hsv(x)
    hue = torch.remainder(hsv[:, 0] + h.view(-1, 1, 1), 1.0)
    return _hsv2rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
_IDENTITY = (1.0, 1.0, 1.0, 0.0)


def color_jitter(x, brightness, contrast, saturation, hue, order, apply_mask):
    """Brightness/contrast/saturation/hue with per-sample factors in a per-sample order (order: (B,4) of op ids).

    Each op runs on the whole batch with identity factors where a sample's op at this position differs,
    so no boolean indexing (and no device sync) is needed.
    """
    factors = (brightness, contrast, saturation, hue)
    ops = range(4) if x.shape[1] == 3 else range(2)  # saturation and hue leave one channel unchanged
    out = x
    for pos in range(4):
        for k in ops:
            sel = (order[:, pos] == k) & apply_mask
            if x.shape[1] == 1 and k >= 2:
                continue
            f = torch.where(sel, factors[k], torch.full_like(factors[k], _IDENTITY[k]))
            out = torch.where(_bmask(sel), _JITTER_OPS[k](out, f), out)
    return out


def random_color_jitter(x, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8, generator=None):
    """ColorJitter applied with probability p, factors and op order drawn per sample."""
    g = generator
    b = x.shape[0]
    fb = _uniform(b, max(0, 1 - brightness), 1 + brightness, g)
    fc = _uniform(b, max(0, 1 - contrast), 1 + contrast, g)
    fs = _uniform(b, max(0, 1 - saturation), 1 + saturation, g)
    fh = _uniform(b, -hue, hue, g)
    order = torch.argsort(torch.rand(b, 4, generator=g, device=g.device), dim=1)
    mask = torch.rand(b, generator=g, device=g.device) < p
    return color_jitter(x, fb, fc, fs, fh, order, mask)


def to_grayscale(x, mask):
    """Replace flagged samples by their 3-channel grayscale; a no-op for one channel."""
    if x.shape[1] == 1:
        return x
    return torch.where(_bmask(mask), rgb_to_gray(x).expand_as(x), x)


def random_grayscale(x, p: float = 0.2, generator=None):
    """Grayscale each sample with probability p."""
    return to_grayscale(x, torch.rand(x.shape[0], generator=generator, device=x.device) < p)


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, k) normalised 1-D Gaussian kernels, torchvision's formula."""
    half = (kernel_size - 1) * 0.5
    xs = torch.linspace(-half, half, steps=kernel_size, device=sigma.device)
    pdf = torch.exp(-0.5 * (xs.view(1, -1) / sigma.view(-1, 1)).pow(2))
    return pdf / pdf.sum(dim=1, keepdim=True)


def gaussian_blur(x, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding and a per-sample sigma (one grouped conv per axis)."""
    b, c, h, w = x.shape
    k = gaussian_kernels(sigma.float(), kernel_size).repeat_interleave(c, dim=0)  # (B*C, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, h, w)


def random_gaussian_blur(x, p: float = 0.5, sigma=(0.1, 2.0), kernel_size: int = 3, generator=None):
    """Blur each sample with probability p and sigma uniform in the range."""
    g = generator
    s = _uniform(x.shape[0], sigma[0], sigma[1], g)
    mask = torch.rand(x.shape[0], generator=g, device=g.device) < p
    return torch.where(_bmask(mask), gaussian_blur(x, s, kernel_size), x)


def solarize(x, threshold: float, mask):
    """Invert pixels at or above the threshold on flagged samples."""
    return torch.where(_bmask(mask) & (x >= threshold), 1.0 - x, x)


def random_solarize(x, p: float = 0.2, threshold: float = 0.5, generator=None):
    """Solarize each sample with probability p."""
    return solarize(x, threshold, torch.rand(x.shape[0], generator=generator, device=x.device) < p)


def normalize(x, mean: Sequence[float], std: Sequence[float]):
    """Per-channel (x - mean) / std."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
