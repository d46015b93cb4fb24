"""Losses run in fp32 even inside a bf16 autocast region."""
from __future__ import annotations

import functools

import torch


def fp32(loss_fn):
    """Run `loss_fn` with autocast off and its tensor arguments in float32.

    Under autocast a matmul of float32 inputs still runs in bf16 (8 bits of mantissa): cosine
    similarities divided by a temperature of 0.1 would carry errors of a few hundredths per logit.
    """
    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        kwargs = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
        device = next((a.device.type for a in (*args, *kwargs.values()) if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return loss_fn(*args, **kwargs)
    return wrapper
