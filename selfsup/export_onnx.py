"""The ONNX file of an export: the whole encoder (input step included) traced in eval mode, then checked.

Eval mode matters: BatchNorm traced in training mode normalises with the batch's own statistics, so the file
gives other features than PyTorch's eval (onnxruntime #4589). The file takes the raw input selfsup's encoder
takes (uint8 images or int64 token ids) with a dynamic batch axis, and is compared with PyTorch on real samples.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import SelfSupError
from .models.encoder import Encoder
from .rundir import TrainedRun

N_CHECK = 16  # samples the ONNX output is compared on


def real_samples(run: TrainedRun, run_dir: Path, n: int = N_CHECK) -> tuple[torch.Tensor, str]:
    """Up to n samples of the run's own data as the encoder takes them, and what they are; random inputs of the
    right shape when the data cannot be read any more (said so in config.json)."""
    from .data.prepare import run_folder_options
    from .data import load_data
    from .data.tokenize import as_tokens, run_tokenizer
    try:
        data = as_tokens(load_data(run.config.data, "train", folder=run_folder_options(run, True, progress=False)),
                         run_tokenizer(run_dir))
        return data.x[:n], f"the first {min(n, len(data))} training samples of {run.config.data}"
    except SelfSupError:
        g = torch.Generator().manual_seed(0)
        if run.spec.kind == "image":
            return torch.randint(0, 256, (n, *run.spec.shape), dtype=torch.uint8, generator=g), "random images"
        return torch.randint(0, run.spec.vocab_size, (n, *run.spec.shape), generator=g), "random token ids"


def export_onnx(encoder: Encoder, run: TrainedRun, run_dir: Path, path: Path, opset: int, atol: float) -> dict:
    """Write `path`, check it with onnx.checker and against PyTorch with onnxruntime; returns what config.json
    records (opset, input, the largest difference seen). Raises SelfSupError when the outputs differ."""
    import onnx
    import onnxruntime as ort

    encoder = encoder.cpu().eval()
    x, what = real_samples(run, run_dir)
    # dynamo=False: the TorchScript exporter needs no onnxscript and handles dynamic_axes directly.
    with warnings.catch_warnings():  # the tracer's notes on mean/std becoming constants: intended
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (x[:2],), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["features"], dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}})
    onnx.checker.check_model(onnx.load(str(path)))
    with torch.no_grad():
        want = encoder(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    diff = float(np.abs(got - want).max())
    if not diff <= atol:
        raise SelfSupError(f"model.onnx differs from PyTorch by {diff:.2g} (> {atol:g}) on {what}; not exported")
    return {"file": "model.onnx", "opset": opset, "input": "input", "output": "features",
            "dtype": str(x.dtype).removeprefix("torch."), "dynamic_axes": {"input": [0], "features": [0]},
            "checked_on": what, "max_abs_diff": diff, "atol": atol}
