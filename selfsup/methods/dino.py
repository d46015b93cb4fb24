"""DINO: a student matches an EMA teacher's centred, sharpened softmax over prototypes, across multi-crop views."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import dino_center, dino_loss, teacher_temperature
from ..models.global_bn import GlobalBatchNorm, convert_batchnorm
from ..models.encoder import Encoder
from ..views.multicrop import dino_views
from .base import Method, OptimDefaults
from .ema import EMATeacher
from .hparams import setting
from .registry import register

_GLOBAL_BN = (GlobalBatchNorm, nn.SyncBatchNorm)
_REF = "the reference code (facebookresearch/dino, main_dino.py)"


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight w = g * v / ||v|| per output row (Salimans & Kingma 2016), as the
    reference's nn.utils.weight_norm(nn.Linear(bottleneck, K, bias=False)) with g filled with 1. With `fixed_norm`
    (the reference's norm_last_layer) g takes no gradient: the prototypes stay unit vectors, so the logits are
    cosines. Written out because torch's weight_norm hooks do not survive the deepcopy an EMA teacher is made by."""

    def __init__(self, in_dim: int, out_dim: int, fixed_norm: bool = True):
        super().__init__()
        v = torch.empty(out_dim, in_dim)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))  # nn.Linear's initialisation, as in the reference
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fixed_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """The reference's DINOHead: Linear-GELU, Linear-GELU, Linear to the bottleneck (3 layers, no BatchNorm),
    l2-normalised, then the weight-normed prototype layer: features b x D -> logits b x K."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, prototypes: int, norm_last_layer: bool = True,
                 bn: bool = False):
        super().__init__()

        def norm():  # the reference's use_bn_in_head: a BatchNorm of its own after each hidden layer
            return [nn.BatchNorm1d(hidden)] if bn else []

        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), *norm(), nn.GELU(), nn.Linear(hidden, hidden), *norm(),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # the reference's _init_weights: truncated normal, std 0.02, zero bias
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck, prototypes, fixed_norm=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))  # b x D -> b x bottleneck (unit) -> b x K


@register
class DINO(Method):
    """backbone + DINO head (student), an EMA copy of both (teacher); the student sees every crop, the teacher
    the two global crops; evaluation uses the teacher's backbone, as the paper does."""

    name = "dino"
    paper = "Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers (ICCV)"
    # BatchNorm over the global batch in student and teacher, as the reference's SyncBatchNorm for backbones with BN.
    sync_bn = True
    optimizers = {
        "lars": OptimDefaults(lr=0.3, weight_decay=1e-6, source="solo-learn's CIFAR recipe (scripts/pretrain/cifar/"
                              "dino.yaml): LARS, lr 0.3 per 256, wd 1e-6 (the CNNs' optimizer here)"),
        "adamw": OptimDefaults(lr=5e-4, weight_decay=0.04, per_256=True,
                               source=f"{_REF}: AdamW, lr 0.0005 per 256, wd 0.04 (the reference's starting value; "
                                      "it raises it to 0.4 on a cosine, here it stays)"),
    }

    @dataclass
    class Hparams:
        prototypes: int = setting(4096, "number of prototypes K (the last layer's outputs)",
                                  source="solo-learn's CIFAR recipe (cifar/dino.yaml num_prototypes 4096); the "
                                         "paper's 65536 is for ImageNet (Caron et al. 2021)")
        hidden: int = setting(2048, "head hidden width",
                              source=f"{_REF}: DINOHead hidden_dim 2048 (also solo-learn's proj_hidden_dim)")
        bottleneck: int = setting(256, "head bottleneck width (l2-normalised before the prototypes)",
                                  source=f"{_REF}: DINOHead bottleneck_dim 256")
        head_bn: bool = setting(True, "BatchNorm after each hidden layer of the head",
                                source=f"{_REF}: --use_bn_in_head (off for its ViTs); on here because without it "
                                       "every short CPU run of ours (digits, Fashion-MNIST, a small CNN) collapsed "
                                       "to a uniform teacher (loss at ln K)")
        norm_last_layer: bool = setting(True, "keep the prototypes unit vectors (weight norm with g fixed at 1)",
                                        source=f"{_REF}: --norm_last_layer True")
        momentum: float = setting(0.996, "teacher EMA momentum at the first step, raised to 1 by the last step on a "
                                         "cosine", source="Caron et al. 2021, sec. 3.1: a cosine schedule from "
                                                          "0.996 to 1 (the reference's --momentum_teacher 0.996)")
        teacher_temp_start: float = setting(0.04, "teacher temperature at the first step",
                                            source="Caron et al. 2021, sec. 3.2: 0.04 linearly warmed up "
                                                   "(the reference's --warmup_teacher_temp 0.04)")
        teacher_temp: float = setting(0.04, "teacher temperature after the warmup",
                                      source="Caron et al. 2021, sec. 3.2 warms 0.04 up to 0.07 for ViTs; kept at "
                                             "0.04 here (the sharper teacher stayed healthy in our short CPU runs, "
                                             "0.07 drifted to uniform; --teacher-temp 0.07 for the paper's)")
        temp_warmup_epochs: float = setting(30.0, "teacher-temperature warmup in epochs, at most 30% of the run",
                                            source="Caron et al. 2021, sec. 3.2: the first 30 epochs; ours: capped at 30% of "
                                                   "the run's steps (30 of the paper's 100 epochs) for short runs")
        student_temp: float = setting(0.1, "student temperature",
                                      source=f"Caron et al. 2021, sec. 3.2: tau_s = 0.1 ({_REF}: student_temp)")
        center_momentum: float = setting(0.9, "EMA momentum of the teacher's centre",
                                         source=f"Caron et al. 2021, eq. 4: m = 0.9 ({_REF}: center_momentum)")
        local_crops: int = setting(8, "local crops per image (0: two global crops only)",
                                   source=f"{_REF}: --local_crops_number 8")
        local_size: int = setting(0, "local crops' size in pixels (0: 96/224 of the image side, at least 8)",
                                  source=f"{_REF}: 96 px locals for 224 px globals, kept in proportion")
        global_scale: tuple[float, float] = setting((0.4, 1.0), "area range of the global crops",
                                                    source=f"{_REF}: --global_crops_scale 0.4 1")
        local_scale: tuple[float, float] = setting((0.05, 0.4), "area range of the local crops",
                                                   source=f"{_REF}: --local_crops_scale 0.05 0.4")
        freeze_last_layer: float = setting(1.0, "epochs during which the student's last layer is not updated",
                                           source=f"{_REF}: --freeze_last_layer 1")
        clip_grad: float = setting(3.0, "largest gradient norm (0: no clipping)",
                                   source=f"{_REF}: --clip_grad 3.0")

        def __post_init__(self):
            if min(self.prototypes, self.hidden, self.bottleneck) < 1 or self.local_crops < 0 or self.local_size < 0:
                raise ValueError("the head widths must be >= 1, local_crops and local_size >= 0")
            if not 0 <= self.momentum <= 1 or not 0 <= self.center_momentum <= 1:
                raise ValueError("momentum and center_momentum must be in [0, 1]")
            if min(self.teacher_temp_start, self.teacher_temp, self.student_temp) <= 0:
                raise ValueError("the temperatures must be > 0")
            for lo, hi in (self.global_scale, self.local_scale):
                if not 0 < lo <= hi <= 1:
                    raise ValueError("a crop scale must be (lo, hi) with 0 < lo <= hi <= 1")
            if min(self.temp_warmup_epochs, self.freeze_last_layer, self.clip_grad) < 0:
                raise ValueError("temp_warmup_epochs, freeze_last_layer and clip_grad must be >= 0")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        self.head = DINOHead(self.backbone.feature_dim, hp.hidden, hp.bottleneck, hp.prototypes, hp.norm_last_layer,
                            hp.head_bn)
        # A separate copy of backbone + head, moved by Method.on_step_end on the cosine schedule over the run.
        self.teacher = EMATeacher(self.backbone, self.head, momentum=hp.momentum, schedule="cosine")
        self.register_buffer("center", torch.zeros(1, hp.prototypes))  # in the checkpoint: resume is exact
        # the temperature of the next step's teacher, set after every step from the step count (a buffer too)
        self.register_buffer("teacher_temp", torch.tensor(hp.teacher_temp_start, dtype=torch.float64))
        self.grad_clip = hp.clip_grad or None
        self._steps_per_epoch: int | None = None  # told by before_optimizer_step
        size = spec.shape[1:]
        self.view_recipe = dino_views(size, spec.mean, spec.std, hp.local_crops, hp.local_size or None,
                                      hp.global_scale, hp.local_scale)
        self._local_note = ""
        if hp.local_crops and not self._takes(self.view_recipe.local_size):
            # A backbone of fixed input size (mlp; vit's position embeddings): the local crops (still 5-40% of the
            # image) are resized to the global size instead, which costs what global crops cost.
            self._local_note = f" (at the image size: backbone {backbone} takes no other)"
            self.view_recipe.local_size = self.view_recipe.size

    def _takes(self, size) -> bool:
        """Whether the backbone takes images of `size` (one forward of a blank pair, in eval mode)."""
        x = torch.zeros(2, self.spec.shape[0], *((size, size) if isinstance(size, int) else size))
        try:
            with torch.no_grad():
                self.backbone.eval()(x)
            return True
        except (RuntimeError, ValueError):
            return False
        finally:
            self.backbone.train()

    def describe(self):
        r = self.view_recipe

        def px(size):
            return f"{size} px" if isinstance(size, int) else "x".join(map(str, size)) + " px"

        locs = f" + {r.n_local} local crops of {px(r.local_size)}{self._local_note}" if r.n_local else ""
        return f"multi-crop: 2 global crops of {px(r.size)}{locs}"

    def make_batch(self, x, generator):
        """{"global": 2b crops, "local": n*b crops}, crop-major (views/multicrop.py)."""
        return self.view_recipe.crops(x, generator)

    @torch.no_grad()
    def teacher_logits(self, g: torch.Tensor) -> torch.Tensor:
        """The teacher's logits of the global crops, (2b) x K, a constant. Its BatchNorm is global when the
        student's is (the reference converts both), as BYOL's target (see BYOL.targets)."""
        student_bn = any(isinstance(m, _GLOBAL_BN) for m in self.backbone.modules())
        if student_bn and not any(isinstance(m, _GLOBAL_BN) for m in self.teacher.modules()):
            convert_batchnorm(self.teacher.net, g.device)
        return self.teacher(g)

    def forward(self, batch):
        g, crops = batch["global"], [batch["global"]] + ([batch["local"]] if "local" in batch else [])
        # One backbone pass per crop size (BatchNorm per size group, as the reference's MultiCropWrapper), one head
        # pass over all: s is (2b + n*b) x K, crop-major.
        s = self.head(torch.cat([self.backbone(c) for c in crops]))
        t = self.teacher_logits(g)  # t: 2b x K
        loss = dino_loss(s, t, self.center, self.teacher_temp, self.hp.student_temp, n_global=2)
        with torch.no_grad():
            q = F.softmax((t.float() - self.center) / self.teacher_temp.float(), dim=-1)
            # Collapse shows in two entropies (Caron et al. 2021, sec. 5.3, Fig. 7): of each teacher output (ln K when
            # uniform: too much centring) and of their batch mean (near 0 when one prototype wins: too much
            # sharpening). Healthy: the first well below ln K, the second well above 0.
            entropy = -(q * q.clamp_min(1e-12).log()).sum(-1).mean()
            mean_q = q.mean(0)
            batch_entropy = -(mean_q * mean_q.clamp_min(1e-12).log()).sum()
            self.center.copy_(dino_center(self.center, t, self.hp.center_momentum))
        return loss, {"teacher_entropy": entropy, "teacher_batch_entropy": batch_entropy,
                      "teacher_temp": self.teacher_temp.detach().float()}

    def frozen_last_layer(self, step: int, steps_per_epoch: int) -> bool:
        """Whether the student's last layer is kept fixed at step `step` (its first freeze_last_layer epochs)."""
        return step < self.hp.freeze_last_layer * steps_per_epoch

    def before_optimizer_step(self, step, steps_per_epoch):
        """The reference's cancel_gradients_last_layer: no gradient (None, so no decay or momentum either) for the
        prototypes in the first epoch ("typically doing so during the first epoch helps training": the reference's
        --freeze_last_layer 1)."""
        self._steps_per_epoch = steps_per_epoch
        if self.frozen_last_layer(step, steps_per_epoch):
            for p in self.head.last_layer.parameters():
                p.grad = None

    def on_step_end(self, step, total):
        super().on_step_end(step, total)  # the teacher's EMA
        self.teacher_temp.fill_(teacher_temperature(step + 1, total, self._steps_per_epoch, self.hp.teacher_temp_start,
                                                    self.hp.teacher_temp, self.hp.temp_warmup_epochs))

    def encoder(self):
        """The teacher's backbone: the paper evaluates the teacher, which outperforms the student during training
        (Caron et al. 2021, sec. 5.2 on the teacher network)."""
        return Encoder(self.teacher.net[0], self.spec)
