"""Linear probe: L2-regularised multinomial logistic regression on frozen features, fitted with L-BFGS.

The same model and solver as scikit-learn's LogisticRegression(lbfgs) and the SimCLR paper's linear
evaluation on transfer tasks (Chen et al. 2020, appendix B.5: L-BFGS, L2 penalty chosen on a validation split),
run full-batch on the features' device. The problem is convex, so the result does not depend on a learning
rate, an epoch count or a seed, and a warm start along a grid of penalties costs a few iterations each.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LinearClassifier:
    """A fitted probe: the training features' mean and std (the only statistics it uses) and the weights."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # num_classes x D
    bias: torch.Tensor  # num_classes

    def logits(self, f: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Class scores for features f (N x D), computed in chunks on the classifier's device."""
        out = [((f[i:i + chunk].to(self.weight.device).float() - self.mean) / self.std) @ self.weight.T + self.bias
               for i in range(0, f.shape[0], chunk)]
        return torch.cat(out) if out else torch.empty(0, self.weight.shape[0], device=self.weight.device)

    def accuracy(self, f: torch.Tensor, y: torch.Tensor) -> float:
        if f.shape[0] == 0:
            return 0.0
        return (self.logits(f).argmax(1) == y.to(self.weight.device)).float().mean().item()


def standardiser(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of training features (constant dimensions left unscaled)."""
    f = f.float()
    mean = f.mean(0, keepdim=True)
    std = f.std(0, unbiased=False, keepdim=True)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


@torch.enable_grad()
def fit_linear(train_f: torch.Tensor, train_y: torch.Tensor, num_classes: int, l2: float = 1e-4,
               max_iter: int = 100, init: LinearClassifier | None = None) -> LinearClassifier:
    """Minimise mean cross-entropy + l2/2 * ||W||^2 (bias unpenalised) over standardised features with L-BFGS.

    `init` warm-starts from another probe fitted on the same features (a neighbouring l2 of a grid).
    """
    mean, std = (init.mean, init.std) if init is not None else standardiser(train_f)
    x = (train_f.float() - mean) / std
    y = train_y.to(x.device).long()
    w = torch.zeros(num_classes, x.shape[1], device=x.device) if init is None else init.weight.clone()
    b = torch.zeros(num_classes, device=x.device) if init is None else init.bias.clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearClassifier(mean, std, w.detach(), b.detach())


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, l2: float = 1e-4, max_iter: int = 100) -> float:
    """Test accuracy in [0, 1] of a logistic regression fitted on (train_f, train_y) with penalty `l2`.

    Only the training features are ever seen by the fit: their mean and std standardise both splits.
    """
    return fit_linear(train_f, train_y, num_classes, l2, max_iter).accuracy(test_f, test_y)
