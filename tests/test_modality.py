"""Beyond images: a token-sequence source, backbone and method registered here run through the same pretrain,
eval and embed commands; backbones expose feature maps; a method in a separate file loads with --plugin."""
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.cli import main
from selfsup.data import Dataset, DataSpec, image_spec, register_source
from selfsup.losses import top1
from selfsup.methods import Method, OptimDefaults, register, setting
from selfsup.models import build_backbone, register_backbone

VOCAB, LENGTH, PAD, CLASSES = 44, 12, 0, 4


@register_source("toy-tokens")
def toy_tokens(split: str) -> Dataset:
    """Sequences whose tokens come mostly from their class's own block of ten ids, right-padded with 0."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 400 if split == "train" else 200
    y = torch.arange(n) % CLASSES
    own = 4 + 10 * y[:, None] + torch.randint(0, 10, (n, LENGTH), generator=g)
    noise = torch.randint(4, VOCAB, (n, LENGTH), generator=g)
    x = torch.where(torch.rand(n, LENGTH, generator=g) < 0.6, own, noise)
    lengths = torch.randint(6, LENGTH + 1, (n,), generator=g)
    x[torch.arange(LENGTH)[None, :] >= lengths[:, None]] = PAD
    return Dataset(x, y, name=f"toy-tokens:{split}", kind="tokens", vocab_size=VOCAB, pad_id=PAD)


class BagOfTokens(nn.Module):
    """Embeddings averaged over the non-pad positions."""

    def __init__(self, spec: DataSpec, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(spec.vocab_size, dim, padding_idx=spec.pad_id)
        self.pad_id, self.feature_dim = spec.pad_id, dim

    def forward_features(self, ids):
        tokens = self.embed(ids)  # tokens: B x L x dim
        keep = (ids != self.pad_id).unsqueeze(-1).float()
        return {"tokens": tokens, "pooled": (tokens * keep).sum(1) / keep.sum(1).clamp(min=1)}

    def forward(self, ids):
        return self.forward_features(ids)["pooled"]


register_backbone("toy_bag", kinds=("tokens",))(BagOfTokens)


@register
class ToyMaskedTokens(Method):
    """Predict masked tokens from the bag of the others: masked language modelling at its crudest."""

    name = "toy_mtp"
    paper = "a toy token method for the modality test"
    modality = "tokens"
    backbone_default = "toy_bag"
    optimizers = {"adamw": OptimDefaults(lr=1e-2, weight_decay=0.0)}

    @dataclass
    class Hparams:
        mask_p: float = setting(0.15, "share of non-pad tokens to mask")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        self.head = nn.Linear(self.backbone.feature_dim, spec.vocab_size)

    def make_batch(self, ids, generator):
        chosen = (torch.rand(ids.shape, generator=generator, device=ids.device) < self.hp.mask_p) & (ids != PAD)
        return {"ids": ids.masked_fill(chosen, 1), "labels": ids.masked_fill(~chosen, -100)}  # 1: the mask id

    def forward(self, batch):
        logits = self.head(self.backbone(batch["ids"]))  # logits: B x vocab, one guess per sequence
        labels = batch["labels"]
        target = labels.max(dim=1).values.clamp(min=0)  # one masked token per sequence is the target
        return F.cross_entropy(logits, target), {"acc": top1(logits, target)}


def test_token_method_runs_pretrain_eval_embed_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["pretrain", "--method", "toy_mtp", "--data", "toy-tokens", "--out", str(run), "--device", "cpu",
                 "--epochs", "3", "--batch-size", "64", "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "kNN" in err  # the online monitor ran on token data
    code = main(["eval", str(run), "--fractions", "100%", "--finetune-max-steps", "20",
                 "--k", "20", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [ln for ln in out.splitlines() if ln.startswith("| toy_mtp") or ln.startswith("| random")]
    assert len(rows) == 2 and "raw pixels" not in out  # no pixel baseline for tokens
    assert all(ln.count("|") == 7 and "—" not in ln for ln in rows)  # kNN (fixed, tuned), linear, fine-tune ran
    code = main(["embed", str(run), "--data", "toy-tokens", "--split", "test", "--out", str(tmp_path / "e.npy")])
    assert code == 0
    assert np.load(tmp_path / "e.npy").shape == (200, 16)


def test_image_method_refuses_token_data(tmp_path, capsys):
    code = main(["pretrain", "--method", "simclr", "--data", "toy-tokens", "--out", str(tmp_path / "r"),
                 "--device", "cpu", "--backbone", "small_cnn"])
    err = capsys.readouterr().err
    assert code == 2 and "simclr learns from image data, but toy-tokens holds tokens data" in err
    with pytest.raises(Exception, match="backbone small_cnn takes image data, not tokens"):
        build_backbone("small_cnn", DataSpec("tokens", (LENGTH,), vocab_size=VOCAB))


@pytest.mark.parametrize("name,shape,map_shape", [("resnet18", (3, 32, 32), (512, 4, 4)),
                                                  ("small_cnn", (1, 28, 28), (256, 4, 4)),
                                                  ("mlp", (1, 8, 8), None)])
def test_backbones_expose_pooled_features_and_feature_maps(name, shape, map_shape):
    torch.manual_seed(0)
    net = build_backbone(name, image_spec(shape)).eval()
    x = torch.randn(2, *shape)
    out = net.forward_features(x)
    torch.testing.assert_close(out["pooled"], net(x))
    assert out["pooled"].shape == (2, net.feature_dim)
    if map_shape is None:
        assert "map" not in out
    else:
        assert out["map"].shape == (2, *map_shape)
        torch.testing.assert_close(out["map"].mean(dim=(2, 3)), out["pooled"])


PLUGIN = '''
from dataclasses import dataclass
import torch.nn.functional as F
from selfsup.methods import Method, OptimDefaults, register
from selfsup.views.ops import normalize, to_float


@register
class Denoise(Method):
    name = "plugin_denoise"
    paper = "a plugin method"
    backbone_default = "mlp"
    optimizers = {"adamw": OptimDefaults(lr=1e-3, weight_decay=0.0)}

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        import torch.nn as nn
        self.decoder = nn.Linear(self.backbone.feature_dim, spec.shape[0] * spec.shape[1] * spec.shape[2])

    def make_batch(self, x, generator):
        return {"x": to_float(x)}

    def forward(self, batch):
        x = batch["x"]
        recon = self.decoder(self.backbone(normalize(x, self.spec.mean, self.spec.std)))
        return F.mse_loss(recon, x.flatten(1)), {}
'''


def test_a_method_in_its_own_file_loads_with_plugin(tmp_path):
    plugin = tmp_path / "denoise.py"
    plugin.write_text(PLUGIN)

    def selfsup(*args):
        return subprocess.run([sys.executable, "-m", "selfsup", *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    run = tmp_path / "run"
    r = selfsup("--plugin", plugin, "pretrain", "--method", "plugin_denoise", "--data", "digits", "--out", run,
                "--device", "cpu", "--epochs", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = selfsup("embed", run, "--data", "digits", "--out", tmp_path / "f.npy")
    assert r.returncode == 2 and "unknown method 'plugin_denoise'" in r.stderr and "--plugin" in r.stderr
    r = selfsup("embed", run, "--data", "digits", "--out", tmp_path / "f.npy", "--plugin", plugin)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "f.npy").shape == (1257, 64)
