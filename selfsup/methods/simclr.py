"""SimCLR: two augmented views, an MLP projector, NT-Xent over the global batch."""
from __future__ import annotations

import torch
from torch import nn

from ..losses import nt_xent
from ..models.heads import mlp_head
from ..views.recipes import simclr_views


class SimCLR(nn.Module):
    """backbone + projector + NT-Xent + the SimCLR view recipe."""

    defaults = dict(optimizer="lars", lr=0.3, weight_decay=1e-6, temperature=0.2, proj_hidden=2048, proj_dim=128)

    def __init__(self, backbone: nn.Module, in_shape, mean, std, temperature: float = 0.2,
                 proj_hidden: int = 2048, proj_dim: int = 128, **_):
        super().__init__()
        self.backbone = backbone
        self.projector = mlp_head(backbone.feature_dim, proj_hidden, proj_dim)
        self.temperature = temperature
        self.views = simclr_views(in_shape[-1], mean, std)

    def make_views(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independently augmented views of a uint8 batch."""
        return self.views(x, generator), self.views(x, generator)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor):
        """Loss and logs for one batch of view pairs."""
        z = self.projector(self.backbone(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.temperature), {}
