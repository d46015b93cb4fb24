"""Losses run in fp32 even inside a bf16 autocast region."""
from __future__ import annotations

import functools

import torch


def device_type(*values) -> str:
    """The device type of the first tensor among `values` (positional and keyword arguments alike), else "cpu"."""
    return next((v.device.type for v in values if torch.is_tensor(v)), "cpu")


def fp32(loss_fn):
    """Run `loss_fn` with autocast off and its tensor arguments in float32.

    Under autocast a matmul of float32 inputs still runs in bf16 (8 bits of mantissa): cosine
    similarities divided by a temperature of 0.1 would carry errors of a few hundredths per logit.
    """
    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        kwargs = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
        with torch.autocast(device_type=device_type(*args, *kwargs.values()), enabled=False):
            return loss_fn(*args, **kwargs)
    return wrapper
