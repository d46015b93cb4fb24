"""`--backbone timm:NAME`: a timm model pretrains, evaluates, embeds, exports under timm's own names and loads
strictly back into timm. Digits are 8x8: timm's resnet18 takes them (its stride-32 stages end at 1x1 maps, and
BatchNorm still sees a batch of values), so no resizing is needed; a ViT with 16-px patches cannot, and says so."""
import json
import sys

import numpy as np
import pytest
import torch

import selfsup
from selfsup import Config, SelfSupError, pretrain
from selfsup.cli import main
from selfsup.data import load_data
from selfsup.export import export
from selfsup.models import build_backbone

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'selfsup[timm]')")


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    """(run_dir, export_dir): SimCLR with timm's resnet18 for 3 steps on digits, exported with ONNX."""
    root = tmp_path_factory.mktemp("timm")
    run = pretrain(Config(method="simclr", data="digits", backbone="timm:resnet18", steps=3, batch_size=64,
                          threads=1, device="cpu", knn_every=0, out=str(root / "run")), progress=False)
    return run, export(run, root / "export", "safetensors,onnx")


def test_timm_export_loads_strictly_into_timm_with_equal_features(timm_run):
    run_dir, ex = timm_run
    conf = json.loads((ex / "config.json").read_text())
    assert conf["architecture"] == "resnet18" and conf["model_args"] == {"in_chans": 1}
    from safetensors.torch import load_file
    model = timm.create_model(conf["architecture"], pretrained=False, num_classes=0, **conf["model_args"]).eval()
    model.load_state_dict(load_file(str(ex / "model.safetensors")), strict=True)  # timm's own names
    x = load_data("digits", "test").x[:40]
    pc = conf["pretrained_cfg"]
    mean, std = (torch.tensor(pc[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        got = model((x.float() / 255 - mean) / std).numpy()
    for path in (ex, run_dir):
        want = selfsup.load(path).encode(x)
        assert want.shape == (40, conf["num_features"]) == (40, 512)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.abs(got).max() > 0 and conf["selfsup"]["onnx"]["max_abs_diff"] <= 1e-4


def test_timm_layers_evaluate_and_embed(timm_run, tmp_path):
    run_dir, ex = timm_run
    enc = selfsup.load(run_dir)
    assert enc.module.layers() == ("act1", "layer1", "layer2", "layer3", "layer4", "pooled")
    x = load_data("digits", "test").x[:8]
    layers = enc.module.all_layers(x)
    assert layers["layer2"].shape == (8, 128 * 1 * 1) and layers["act1"].shape[0] == 8
    torch.testing.assert_close(layers["pooled"], enc.module(x))
    r = selfsup.evaluate(run_dir, protocols=("knn",), fractions=(1.0,), baselines=False, device="cpu",
                         progress=False, layer="layer3", plots=False)
    assert r["layer"] == "layer3" and r["results"][0]["knn"] > 0.3  # 10 classes: chance is 0.1
    main(["embed", str(ex), "--data", "digits", "--split", "test", "--out", str(tmp_path / "f.npz"),
          "--device", "cpu"])
    np.testing.assert_allclose(np.load(tmp_path / "f.npz")["features"][:8], enc.encode(x), rtol=0, atol=1e-5)


def test_timm_vit_is_built_for_the_data_size_and_fine_tunes_as_a_transformer():
    vit = build_backbone("timm:vit_tiny_patch16_224", (1, 32, 32))
    assert vit.model_args == {"in_chans": 1, "img_size": [32, 32]} and vit.finetune_family == "transformer"
    assert vit(torch.zeros(2, 1, 32, 32)).shape == (2, 192) and vit.layer_names[0] == "blocks.0"
    assert build_backbone("timm:resnet18", (3, 8, 8)).finetune_family == "cnn"
    with pytest.raises(SelfSupError, match="cannot take 1x8x8 images") as e:
        build_backbone("timm:vit_tiny_patch16_224", (1, 8, 8))  # 16-px patches on 8-px images
    assert "\n" not in str(e.value)


def test_unknown_timm_name_and_missing_timm_are_one_line_errors(monkeypatch, capsys, tmp_path):
    code = main(["pretrain", "--data", "digits", "--backbone", "timm:resnt18", "--steps", "1", "--threads", "1",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "did you mean timm:resnet18" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SelfSupError, match="unknown backbone 'resnet81'.*resnet18"):
        build_backbone("resnet81", (1, 8, 8))
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(SelfSupError, match=r"needs the timm package: pip install 'selfsup\[timm\]'"):
        build_backbone("timm:resnet18", (1, 8, 8))
