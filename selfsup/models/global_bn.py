"""BatchNorm over the global batch of every process, on any device (torch's SyncBatchNorm is GPU-only).

SimCLR normalises with statistics of the whole batch across devices ("global BN", Chen et al. 2020, sec. 2.3 /
appendix B.1): per-device statistics would let the model find its positives from them. On CUDA the training
loop uses torch.nn.SyncBatchNorm; this module is its counterpart for CPU (gloo) runs and for the tests.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..distributed import all_sum, world_size


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm1d/2d/3d whose training statistics are those of the batch concatenated over every process.

    Two autograd-aware all-reduces per call: the sums (mean), then the squared deviations (variance), so the
    result equals one process's BatchNorm on the global batch up to float rounding, and the gradient flows
    through the statistics to every process. Eval mode, or one process, is plain F.batch_norm. Parameters and
    buffers have BatchNorm's names, so checkpoints load into a plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {x.dim()}-D)")

    def _factor(self) -> float:
        """BatchNorm's running-average factor (momentum, or the cumulative 1/n when momentum is None)."""
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local = x.numel() // x.shape[1]
        count = all_sum(torch.tensor([float(local)], device=x.device))  # count: 1, samples x positions overall
        mean = all_sum(xf.sum(dims)) / count  # mean: C
        var = all_sum((xf - mean.view(shape)).square().sum(dims)) / count  # var: C (biased, as BatchNorm uses)
        if self.track_running_stats:
            with torch.no_grad():
                factor = self._factor()
                n = float(count)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm) -> "GlobalBatchNorm":
        """A GlobalBatchNorm that shares `bn`'s parameters and buffers (the same tensors, not copies)."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.train(bn.training)
        return new


def convert_batchnorm(module: nn.Module, device: torch.device, skip: tuple[type, ...] = ()) -> nn.Module:
    """Replace every BatchNorm under `module` by one over the global batch, in place, except inside `skip` types
    (EMA teachers keep their own per-process BatchNorm). torch.nn.SyncBatchNorm on CUDA, GlobalBatchNorm
    elsewhere; both keep the parameters (the same Parameter objects, so an optimizer or EMA teacher that
    already holds them still does) and the state-dict names."""
    for name, child in module.named_children():
        if isinstance(child, skip):
            continue
        if isinstance(child, _BatchNorm) and not isinstance(child, (GlobalBatchNorm, nn.SyncBatchNorm)):
            new = (nn.SyncBatchNorm.convert_sync_batchnorm(child) if device.type == "cuda"
                   else GlobalBatchNorm.from_batchnorm(child))
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device, skip)
    return module


_GLOBAL = (GlobalBatchNorm, nn.SyncBatchNorm)


def follow_global_bn(teacher: nn.Module, students: list[nn.Module], device: torch.device) -> None:
    """Make the BatchNorms of an EMA teacher global once its students' are (torchrun with sync_bn), as the
    references' SyncBatchNorm over the whole model (BYOL's cross-replica BN; MoCo v3's convert_sync_batchnorm).
    train/parallel.wrap leaves EMA teachers per process (MoCo v2's shuffle needs that), so a method whose teacher
    should follow calls this before the teacher's forward; it converts in place, once, keeping the parameters and
    buffers (the same tensors, so the EMA and the checkpoint names are unchanged)."""
    if any(isinstance(m, _GLOBAL) for s in students for m in s.modules()) and \
            not any(isinstance(m, _GLOBAL) for m in teacher.modules()):
        convert_batchnorm(teacher, device)
