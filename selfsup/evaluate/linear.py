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
    """A fitted probe: the training features' mean and std (the only statistics it uses) and the weights, and
    how its fit ended: ``converged`` (the objective's largest gradient component fell below the tolerance) after
    ``iterations`` L-BFGS iterations."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # num_classes x D
    bias: torch.Tensor  # num_classes
    converged: bool = False
    iterations: int = 0

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


def restandardised(clf: LinearClassifier, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) giving exactly ``clf``'s logits on features standardised with (mean, std) instead of its
    own statistics: W' = W * std / std_clf, b' = b - W . (mean_clf - mean) / std_clf. A warm start from a probe
    fitted on another subset (the validation fit) then starts from the very function that was validated."""
    w = clf.weight / clf.std
    return w * std, clf.bias - ((clf.mean - mean) * w).sum(1)


@torch.enable_grad()
def _lbfgs(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float,
           max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """L-BFGS on mean CE + l2/2 ||W||^2 from (w, b) in x's dtype until the largest gradient component is at
    most tol, the objective stops improving, or max_iter iterations: (w, b, the largest gradient component at
    the end, iterations)."""
    w, b = w.to(x.dtype).clone().requires_grad_(True), b.to(x.dtype).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, max_eval=max_iter * 2, history_size=20,
                            tolerance_grad=tol, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    closure()  # the gradient at the final point decides convergence, not the optimiser's stopping reason
    grad = max(w.grad.abs().max().item(), b.grad.abs().max().item())
    return w.detach(), b.detach(), grad, int(opt.state[opt._params[0]].get("n_iter", 0))


def fit_linear(train_f: torch.Tensor, train_y: torch.Tensor, num_classes: int, l2: float = 1e-4,
               max_iter: int = 1000, init: LinearClassifier | None = None, tol: float = 1e-4) -> LinearClassifier:
    """Minimise mean cross-entropy + l2/2 * ||W||^2 (bias unpenalised) over standardised features with L-BFGS.

    train_f: (N, D) features, train_y: (N,) labels. Standardised with train_f's own mean and std. `init`
    warm-starts from another probe's function (a neighbouring l2 of a grid, or the validated fit before the
    refit on the whole subset), re-expressed in these statistics. Iterates until the largest gradient
    component is at most `tol` (``converged``), or the objective stops improving, or `max_iter` iterations,
    and records which, with ``iterations``: a convex problem has one optimum, and an unconverged fit is not
    it. Float32 first; where float32 loss differences vanish before `tol` is reached (a stall, seen at 1.1e-4
    on 600 Fashion-MNIST images), the remaining iterations continue in float64 from that point.
    """
    mean, std = standardiser(train_f)
    x = (train_f.float() - mean) / std
    y = train_y.to(x.device).long()
    if init is None:
        w, b = torch.zeros(num_classes, x.shape[1], device=x.device), torch.zeros(num_classes, device=x.device)
    else:
        w, b = restandardised(init, mean, std)
    w, b, grad, done = _lbfgs(x, y, w, b, l2, max_iter, tol)
    if grad > tol and done < max_iter and x.device.type != "mps":  # stalled in float32 (MPS has no float64)
        w, b, grad, more = _lbfgs(x.double(), y, w, b, l2, max_iter - done, tol)
        done += more
    return LinearClassifier(mean, std, w.float(), b.float(), converged=grad <= tol, iterations=done)


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, l2: float = 1e-4, max_iter: int = 1000) -> float:
    """Test accuracy in [0, 1] of a logistic regression fitted on (train_f, train_y) with penalty `l2`.

    Only the training features are ever seen by the fit: their mean and std standardise both splits.
    """
    return fit_linear(train_f, train_y, num_classes, l2, max_iter).accuracy(test_f, test_y)
