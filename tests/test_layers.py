"""Named layers: shapes, pooling against a direct formula, the default unchanged, `--layer` through eval and
embed, and `--layer best` chosen from the training split only."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from selfsup import Config, pretrain
from selfsup import api
from selfsup.cli import main
from selfsup.data import image_spec, load_data
from selfsup.errors import SelfSupError
from selfsup.evaluate.layers import choose_layer
from selfsup.models import Encoder, build_backbone
from selfsup.models.layers import grid_size


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the probes' many small L-BFGS steps: a second thread only waits on a shared CPU


def encoder(name, shape):
    spec = image_spec(shape, [0.5] * shape[0], [0.25] * shape[0])
    torch.manual_seed(0)
    return Encoder(build_backbone(name, spec).eval(), spec)


@pytest.mark.parametrize("name,shape,layers", [
    ("small_cnn", (1, 28, 28), {"block1": (32, 14), "block2": (64, 7), "block3": (128, 4), "block4": (256, 4)}),
    ("resnet18", (3, 32, 32), {"layer1": (64, 32), "layer2": (128, 16), "layer3": (256, 8), "layer4": (512, 4)}),
])
def test_conv_layers_pool_their_maps_to_a_grid(name, shape, layers):
    enc = encoder(name, shape)
    assert enc.layers() == (*layers, "pooled")
    x = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    outs = enc.backbone.forward_layers(enc.prepare(x))
    vecs = enc.all_layers(x)
    dims = enc.layer_dims()
    for layer, (c, side) in layers.items():
        assert outs[layer].shape == (3, c, side, side)
        g = grid_size(c, side, side)
        assert g == min(side, int((2048 // c) ** 0.5)) and dims[layer] == c * g * g == vecs[layer].shape[1]
        if side % g == 0:  # average of each (side/g)^2 block, channel-major: the pooling by its definition
            s = side // g
            ref = outs[layer].reshape(3, c, g, s, g, s).mean((3, 5)).reshape(3, -1)
            assert torch.allclose(vecs[layer], ref, atol=1e-5)
    assert torch.equal(vecs["pooled"], enc(x)) and dims["pooled"] == enc.feature_dim


def test_mlp_layers_are_its_hidden_activations():
    enc = encoder("mlp", (1, 28, 28))
    assert enc.layers() == ("hidden1", "hidden2", "pooled") and enc.layer_dims() == dict(hidden1=512, hidden2=256,
                                                                                          pooled=64)
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    net = enc.backbone.net
    h1 = torch.relu(net[1](net[0](enc.prepare(x))))
    assert torch.allclose(enc.at_layer("hidden1")(x), h1)
    assert torch.allclose(enc.at_layer("hidden2")(x), torch.relu(net[3](h1)))


def test_default_layer_is_the_backbone_output_and_unknown_layers_are_refused():
    enc = encoder("small_cnn", (1, 28, 28))
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert enc.layer == "pooled" and enc.at_layer("pooled") is enc
    assert torch.equal(enc(x), enc.backbone(enc.prepare(x)))
    assert enc.at_layer("block2").backbone is enc.backbone  # shared, not copied
    with pytest.raises(SelfSupError, match="no layer 'layer3' in SmallCNN; choose from block1, block2, .*pooled"):
        enc.at_layer("layer3")


class Planted(nn.Module):
    """A backbone whose layer "signal" holds the pixels and whose other layers hold noise."""

    layer_names = ("noise", "signal")
    feature_dim = 8

    def forward(self, x):
        return self.forward_layers(x)["pooled"]

    def forward_layers(self, x):
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(x.shape[0], 8, generator=g)
        return {"noise": noise, "signal": x.flatten(1), "pooled": noise[:, :4]}


def test_choose_layer_finds_the_informative_layer_on_validation(digits):
    train, _ = digits
    spec = image_spec(train.x.shape[1:], [8.0], [4.0])
    choice = choose_layer(Encoder(Planted(), spec), train.x, train.labels, 10, "cpu", max_samples=600)
    assert choice["layer"] == "signal" and choice["scores"]["signal"] > 0.8 > 0.3 > choice["scores"]["noise"]
    # a class-balanced ~600 of the 1257 (rounded per class), 20% of them validating
    assert abs(choice["samples"] - 600) <= 10 and abs(choice["validation"] - 0.2 * choice["samples"]) <= 10
    knn = choose_layer(Encoder(Planted(), spec), train.x, train.labels, 10, "cpu", by="knn", max_samples=600)
    assert knn["layer"] == "signal"
    one_each = torch.stack([(train.labels == c).nonzero()[0, 0] for c in range(10)])  # nothing to validate on
    none = choose_layer(Encoder(Planted(), spec), train.x[one_each], train.labels[one_each], 10, "cpu")
    assert none["layer"] == "pooled" and none["scores"] == {} and none["validation"] == 0


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("layers") / "ae"
    torch.set_num_threads(1)
    return pretrain(Config(method="autoencoder", data="digits", epochs=1, out=str(out), device="cpu", knn_every=0),
                    progress=False)


def test_best_layer_is_chosen_per_fraction_on_its_own_labelled_subset(ae_run, monkeypatch):
    from selfsup.evaluate import report
    from selfsup.data.splits import class_balanced_subset

    seen = []

    def spy(enc, train_x, train_y, *args, **kwargs):
        seen.append((train_x, train_y))
        return choose_layer(enc, train_x, train_y, *args, **kwargs)

    monkeypatch.setattr(report, "choose_layer", spy)
    result = api.evaluate(ae_run, fractions=(0.1, 1.0), protocols=("knn",), layer="best", layer_by="knn",
                          progress=False)
    train = load_data("digits", "train")
    subsets = [class_balanced_subset(train.labels, f) for f in (0.1, 1.0)]
    # ours and the random-init baseline, each choosing its own layer at each fraction, from exactly that
    # fraction's labelled subset: the 10% row's layer is chosen with its 126 labels, not 1,257
    assert len(seen) == 4
    for (x, y), idx in zip(seen, [subsets[0], subsets[1], subsets[0], subsets[1]]):
        assert torch.equal(x, train.x[idx]) and torch.equal(y.cpu(), train.labels[idx])
    rows = {(r["features"], r["fraction"]): r for r in result["results"]}
    for (name, f), r in rows.items():
        if name == "raw pixels":
            assert "layer" not in r
            continue
        c = r["layer_choice"]
        assert r["layer"] == c["layer"] in ("hidden1", "hidden2", "pooled")
        assert set(c["scores"]) == {"hidden1", "hidden2", "pooled"} and c["samples"] == r["labels"]
    assert result["layer"] == rows[("autoencoder (ours)", 1.0)]["layer"]  # the run-level choice: 100%'s
    assert result["random_layer"] == rows[("random init", 1.0)]["layer"]
    saved = json.loads((ae_run / "eval.json").read_text())
    assert saved["layer"] == result["layer"] and saved["layer_choice"]["fraction"] == 1.0
    md = (ae_run / "eval.md").read_text()
    assert "validation accuracy by layer" in md and "autoencoder (ours) at 10%:" in md
    assert f"| autoencoder (ours) @ {rows[('autoencoder (ours)', 0.1)]['layer']} | 10% (" in md


def test_layer_through_eval_and_embed_cli(ae_run, tmp_path, capsys):
    assert main(["embed", str(ae_run), "--data", "digits", "--out", str(tmp_path / "p.npy")]) == 0
    assert main(["embed", str(ae_run), "--data", "digits", "--out", str(tmp_path / "h.npy"), "--layer", "hidden1"]) == 0
    pooled, hidden = np.load(tmp_path / "p.npy"), np.load(tmp_path / "h.npy")
    assert pooled.shape == (1257, 64) and hidden.shape == (1257, 512) and (hidden >= 0).all()  # after its ReLU

    assert main(["eval", str(ae_run), "--layer", "hidden2", "--protocols", "knn", "--fractions", "100%",
                 "--no-baselines", "--no-progress"]) == 0
    assert json.loads((ae_run / "eval.json").read_text())["layer"] == "hidden2"
    assert "Layer: hidden2" in capsys.readouterr().out
    # embed --layer best reads the choice of `eval --layer best`; there is none in this eval.json yet
    assert main(["embed", str(ae_run), "--data", "digits", "--out", str(tmp_path / "b.npy"), "--layer", "best"]) == 2
    assert main(["eval", str(ae_run), "--layer", "block9", "--no-progress"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 2 and "needs the layer chosen by" in err[0]
    assert err[1] == "selfsup: error: no layer 'block9' in MLPEncoder; choose from hidden1, hidden2, pooled " \
                     "(or 'best' with selfsup eval: chosen on a validation split)"
