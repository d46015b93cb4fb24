"""README's "Use the encoder elsewhere": every Python block runs as written (plain torchvision, timm, onnxruntime,
selfsup.load) on fresh exports, and each block's `feats` equals selfsup's own features."""
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import selfsup
from selfsup import Config, pretrain
from selfsup.data import load_data
from selfsup.export import export

README = Path(__file__).resolve().parents[1] / "README.md"
ATOL = {"r18-export/model.onnx": 1e-4}  # onnxruntime's kernels; torchvision and timm run PyTorch's: 1e-5


def section_blocks() -> list[str]:
    text = README.read_text()
    start = text.index("## Use the encoder elsewhere")
    section = text[start:text.index("\n## ", start + 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The folders the snippets name, in a fresh working folder: r18-export (torchvision ResNet-18, with ONNX),
    timm-export (timm's resnet18), simclr-encoder, and two image files."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime snippet needs it (pip install 'selfsup[onnx]')")
    pytest.importorskip("timm", reason="the timm snippet needs it (pip install 'selfsup[timm]')")
    root = tmp_path_factory.mktemp("readme")
    common = dict(method="simclr", data="digits", steps=3, batch_size=64, threads=1, device="cpu", knn_every=0)
    r18 = pretrain(Config(backbone="resnet18", out=str(root / "r18"), **common), progress=False)
    tm = pretrain(Config(backbone="timm:resnet18", out=str(root / "tm"), **common), progress=False)
    export(r18, root / "r18-export", "safetensors,onnx")
    export(r18, root / "simclr-encoder")
    export(tm, root / "timm-export")
    x = load_data("digits", "test").x[:16]
    for i in range(2):
        Image.fromarray(x[i, 0].numpy(), "L").save(root / f"img{i}.png")
    return root, x


def test_the_section_has_the_torchvision_timm_and_onnxruntime_snippets():
    code = "\n".join(section_blocks())
    for needed in ("torchvision.models.resnet18()", "timm.create_model(", "ort.InferenceSession(", "selfsup.load("):
        assert needed in code


@pytest.mark.parametrize("i", range(len(section_blocks())))
def test_each_snippet_runs_and_gives_selfsups_features(i, exports, monkeypatch):
    root, x = exports
    monkeypatch.chdir(root)
    block = section_blocks()[i]
    ns = {"x": x}
    exec(compile(block, f"README block {i}", "exec"), ns)
    feats = ns["feats"]
    feats = feats.detach().numpy() if hasattr(feats, "detach") else np.asarray(feats)
    used = re.search(r'"([\w-]+)/(model\.\w+|config\.json)"', block)
    if used is None:  # the selfsup.load block: features of the two image files
        np.testing.assert_allclose(feats, selfsup.load(root / "simclr-encoder").encode(x[:2]), rtol=0, atol=1e-5)
        return
    want = selfsup.load(root / used.group(1)).encode(x)
    atol = next((v for k, v in ATOL.items() if k in block), 1e-5)
    diff = float(np.abs(feats - want).max())
    print(f"README block {i} ({used.group(1)}): max |feats - selfsup.load(...).encode(x)| = {diff:.2g}")
    assert feats.shape == want.shape and diff <= atol
