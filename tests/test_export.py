"""`selfsup export` and `selfsup.load`: the encoder leaves the run and gives the same features everywhere."""
import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import selfsup
from selfsup import Config, SelfSupError, pretrain
from selfsup.cli import main
from selfsup.data import load_data
from selfsup.export import export
from selfsup.rundir import load_run

from test_mlm import write_corpus

ATOL_SAFETENSORS = 1e-6  # the same float32 tensors and the same code: equal up to summation order
ATOL_ONNX = 1e-4  # onnxruntime's kernels against PyTorch's, float32


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (run_dir, export_dir)}: tiny runs, each exported with safetensors and ONNX."""
    root = tmp_path_factory.mktemp("export")
    text = write_corpus(root / "c.tsv", n=96)
    configs = {  # epochs=1 where the weights must have moved (MoCo's key encoder then differs from the query's)
        "moco": dict(method="moco", data="digits", epochs=1),
        "simclr": dict(method="simclr", data="digits", epochs=0),
        "mae": dict(method="mae", data="digits", epochs=0),
        "mlm": dict(method="mlm", data=str(text), epochs=1, backbone="transformer_tiny", vocab_size=100, seq_len=16),
        "resnet18": dict(method="simclr", data="digits", epochs=0, backbone="resnet18"),
    }
    out = {}
    for name, kw in configs.items():
        run = pretrain(Config(**{"batch_size": 64, "threads": 1, "device": "cpu", "knn_every": 0,
                                 "out": str(root / name), **kw}), progress=False)
        formats = "safetensors" if name == "resnet18" else "safetensors,onnx"
        out[name] = (run, export(run, root / f"{name}-export", formats))
    return out


def samples(name, runs):
    if name == "mlm":
        return [ln.split("\t")[1] for ln in open(runs["mlm"][0].parent / "c.tsv").read().splitlines()[:40]]
    return load_data("digits", "test").x[:40]


@pytest.mark.parametrize("name", ["moco", "simclr", "mae", "mlm"])
def test_export_and_load_give_the_in_memory_features(name, runs):
    ort = pytest.importorskip("onnxruntime")
    run_dir, ex = runs[name]
    run = load_run(run_dir)
    x = samples(name, runs)
    loaded = selfsup.load(run_dir)
    ids = loaded._tokens(x) if name == "mlm" else x
    with torch.no_grad():
        want = run.encoder.eval()(ids).numpy()  # what evaluation and embed use (MoCo: the query encoder)
    for path in (ex, run_dir):
        got = selfsup.load(path).encode(x, batch_size=16)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_SAFETENSORS)
    sess = ort.InferenceSession(str(ex / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {"input": ids.numpy()})[0]  # 40 samples: the batch axis is dynamic (traced on 2)
    np.testing.assert_allclose(onnx_out, want, rtol=0, atol=ATOL_ONNX)
    conf = json.loads((ex / "config.json").read_text())
    assert conf["selfsup"]["onnx"]["opset"] >= 13 and conf["num_features"] == want.shape[1]
    assert ("teacher is not exported" in conf["selfsup"]["weights"]) == (name == "moco")


def test_moco_exports_the_query_encoder_not_the_key_encoder(runs):
    run = load_run(runs["moco"][0])
    x = load_data("digits", "test").x[:40]
    key = run.method.key_encoder
    key_backbone = next(m for m in key.modules() if type(m) is type(run.encoder.backbone))
    with torch.no_grad():
        from selfsup.models.encoder import Encoder
        keys = Encoder(key_backbone, run.spec).eval()(x).numpy()
    assert np.abs(selfsup.load(runs["moco"][1]).encode(x) - keys).max() > 1e-3  # the two differ after training


def test_export_folder_holds_no_pickle_and_loads_strictly(runs):
    from safetensors.torch import load_file
    run_dir, ex = runs["simclr"]
    names = {p.name for p in ex.iterdir()}
    assert names == {"model.safetensors", "config.json", "README.md", "model.onnx"}
    for p in ex.iterdir():
        assert not p.read_bytes().startswith(b"\x80") and b"PK\x03\x04" not in p.read_bytes()[:4]  # no pickle/zip
    run = load_run(run_dir)
    run.encoder.backbone.load_state_dict(load_file(str(ex / "model.safetensors")), strict=True)
    assert "## Evaluation" in (ex / "README.md").read_text() or "No evaluation" in (ex / "README.md").read_text()
    assert (runs["mlm"][1] / "tokenizer.json").is_file()


def test_resnet_export_loads_strictly_into_torchvision(runs):
    from safetensors.torch import load_file
    run_dir, ex = runs["resnet18"]
    conf = json.loads((ex / "config.json").read_text())
    assert conf["stem"].startswith("small")
    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(conf["pretrained_cfg"]["in_chans"], 64, 3, 1, 1, bias=False)  # the small stem
    net.maxpool, net.fc = torch.nn.Identity(), torch.nn.Identity()
    net.load_state_dict(load_file(str(ex / "model.safetensors")), strict=True)
    x = load_data("digits", "test").x[:8]
    mean = torch.tensor(conf["pretrained_cfg"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(conf["pretrained_cfg"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        got = net.eval()((x.float() / 255 - mean) / std).numpy()
    np.testing.assert_allclose(got, selfsup.load(run_dir).encode(x), rtol=0, atol=1e-5)


def test_encode_takes_paths_pil_images_and_hwc_arrays(runs, tmp_path):
    enc = selfsup.load(runs["simclr"][1])
    x = load_data("digits", "test").x[:6]  # uint8 (6, 1, 8, 8)
    paths = []
    for i, img in enumerate(x):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img[0].numpy()).save(paths[-1])
    want = enc.encode(x)
    np.testing.assert_array_equal(enc.encode(paths), want)
    np.testing.assert_array_equal(enc.encode([Image.open(p) for p in paths]), want)
    np.testing.assert_array_equal(enc.encode(x.permute(0, 2, 3, 1).numpy()), want)
    with pytest.raises(SelfSupError, match="this encoder takes"):
        enc.encode(np.zeros((2, 3, 9, 9), np.uint8))


def test_embed_from_an_export_equals_embed_from_the_run(runs, tmp_path):
    run_dir, ex = runs["moco"]
    assert main(["embed", str(run_dir), "--data", "digits", "--split", "test", "--out", str(tmp_path / "r.npy")]) == 0
    assert main(["embed", str(ex), "--data", "digits", "--split", "test", "--out", str(tmp_path / "e.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), np.load(tmp_path / "e.npy"))


def _copy(ex, dst):
    dst.mkdir()
    for p in ex.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_a_tampered_export_is_a_one_line_error(runs, tmp_path):
    from safetensors.torch import load_file, save_file
    ex = runs["simclr"][1]
    tensors = load_file(str(ex / "model.safetensors"))
    first = next(k for k, v in tensors.items() if v.dim() and v.shape[0] > 1)
    missing = _copy(ex, tmp_path / "missing")
    save_file({k: v for k, v in tensors.items() if k != first}, str(missing / "model.safetensors"))
    shape = _copy(ex, tmp_path / "shape")
    save_file({**tensors, first: tensors[first][:1].clone()}, str(shape / "model.safetensors"))
    pickled = _copy(ex, tmp_path / "pickled")
    torch.save(tensors, pickled / "model.safetensors")
    for folder, what in ((missing, "missing"), (shape, "has shape"), (pickled, "cannot read")):
        with pytest.raises(SelfSupError, match=what) as e:
            selfsup.load(folder)
        assert "\n" not in str(e.value)


def test_bad_export_arguments_exit_2_and_write_nothing(runs, tmp_path, capsys):
    run_dir = runs["simclr"][0]
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    for args in (["export", str(tmp_path / "nope"), "--out", str(tmp_path / "a")],
                 ["export", str(run_dir), "--out", str(other)],
                 ["export", str(run_dir), "--out", str(tmp_path / "b"), "--format", "pickle"]):
        assert main(args) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_missing_onnx_package_is_a_one_line_error(runs, tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert main(["export", str(runs["simclr"][0]), "--out", str(tmp_path / "o"), "--format", "onnx"]) == 2
    assert "pip install 'selfsup[onnx]'" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_tied_tensors_are_saved_once_and_restored():
    from selfsup.export import backbone_tensors
    net = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    net[1].weight = net[0].weight  # tied input/output embedding
    tensors, tied = backbone_tensors(net)
    assert set(tensors) == {"0.weight"} and tied == {"1.weight": "0.weight"}
