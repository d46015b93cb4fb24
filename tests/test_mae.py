"""MAE's pieces that a broken implementation would get past the end-to-end checks: the unshuffle of the decoder's
input (against a loop), the paper's crop and flip before masking, and learning beyond what a decoder ignoring the
encoder can reach (the per-position mean patch), through pretrain."""
import json

import numpy as np
import pytest
import torch

from selfsup import Config, SelfSupError, pretrain
from selfsup.data.types import image_spec
from selfsup.losses.masked import masked_patch_mse
from selfsup.methods import get_method, parse_hparams
from selfsup.views import masks


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make(name, spec=image_spec((1, 28, 28), [0.3], [0.35]), **args):
    cls = get_method(name)
    torch.manual_seed(0)
    return cls(spec, parse_hparams(cls.name, cls.Hparams, args), "vit")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_unshuffle_puts_each_visible_token_at_its_patch_and_the_mask_token_elsewhere():
    ids_keep, ids_restore, mask, _ = masks.random_patch_mask(5, 16, 0.75, gen(3))
    visible = torch.randn(5, 4, 3, generator=gen(4))
    fill = torch.randn(1, 1, 3, generator=gen(5))
    expected = fill.expand(5, 16, 3).clone()  # by hand: patch ids_keep[b, k] gets visible[b, k], the rest fill
    for b in range(5):
        for k in range(4):
            expected[b, ids_keep[b, k]] = visible[b, k]
    assert torch.equal(masks.unshuffle_tokens(visible, fill, ids_restore), expected)
    assert torch.equal((expected == fill).all(-1), mask)  # the fills sit exactly on the masked patches


def test_mae_crops_and_flips_before_masking():
    x = torch.randint(0, 256, (16, 1, 28, 28), generator=gen(), dtype=torch.uint8)
    plain = make("mae", crop_scale=(1.0, 1.0), flip_p=0.0).make_batch(x, gen())["img"]
    torch.testing.assert_close(plain, (x.float() / 255 - 0.3) / 0.35)  # no augmentation: the normalised image
    flipped = make("mae", crop_scale=(1.0, 1.0), flip_p=1.0).make_batch(x, gen())["img"]
    assert torch.equal(flipped, plain.flip(-1))
    cropped = make("mae", flip_p=0.0).make_batch(x, gen())["img"]  # the paper's 0.2-1 crops, resized back
    assert cropped.shape == plain.shape and all(not torch.allclose(cropped[i], plain[i]) for i in range(16))
    assert make("mae").hp.crop_scale == (0.2, 1.0) and make("mae").hp.flip_p == 0.5
    with pytest.raises(SelfSupError, match="crop_scale"):
        make("mae", crop_scale=(0.0, 1.0))


def stripes(n=256, seed=0):
    """8 x 8 images of horizontal or vertical stripes of 1 px, either phase, plus noise: per position the mean
    (normalised) patch is ~0 over the four kinds, while any one visible patch tells the kind."""
    g = gen(seed)
    horiz = (torch.arange(8).view(8, 1) % 2).expand(8, 8)
    kind = torch.arange(n) % 4
    base = torch.where((kind % 2 == 0).view(-1, 1, 1), horiz, horiz.T)
    base = torch.where((kind >= 2).view(-1, 1, 1), 1 - base, base).float()
    return (40 + 150 * base + 30 * torch.rand(n, 8, 8, generator=g)).round().to(torch.uint8)[:, None]


def test_mae_learns_beyond_the_mean_patch_of_each_position(tmp_path):
    """Through pretrain: 64 steps on stripes (last epoch 0.023). The mean patch of each position (what a decoder
    that ignores the encoder learns) scores 0.75 there; reading the kind from the visible patches scores near 0."""
    x = stripes()
    np.savez(tmp_path / "stripes.npz", images=x[:, 0].numpy())
    run = pretrain(Config(method="mae", data=str(tmp_path / "stripes.npz"), out=str(tmp_path / "m"), device="cpu",
                          epochs=8, batch_size=32, lr=2e-3, knn_every=0, warmup_epochs=0, holdout=0, threads=1,
                          method_args={"crop_scale": [1.0, 1.0], "flip_p": 0.0}), progress=False)
    mae = make("mae", spec=image_spec((1, 8, 8), [0.5], [0.3]), crop_scale=(1.0, 1.0), flip_p=0.0)
    batch = mae.make_batch(x, gen(9))
    target = mae.targets(batch["img"])
    mean_patch = target.mean(0, keepdim=True).expand_as(target)  # the best per-position constant, on these masks
    baseline = masked_patch_mse(mean_patch, target, batch["mask"]).item()
    assert baseline > 0.7
    losses = _losses(run)
    assert losses[-1] < 0.3 * baseline, (losses, baseline)
