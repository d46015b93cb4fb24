"""Losses as pure functions of tensors: testable against their formulas without a model."""
from .barlow import barlow_twins
from .byol import byol_loss, negative_cosine
from .diagnostics import effective_rank, embedding_std, top1
from .dino import dino_center, dino_loss, teacher_temperature
from .info_nce import info_nce, info_nce_logits
from .moco_v3 import mocov3_logits, mocov3_loss
from .nt_xent import nt_xent, nt_xent_logits
from .reconstruction import reconstruction_mse
from .simcse import simcse_logits, simcse_loss
from .vicreg import vicreg

__all__ = ["barlow_twins", "byol_loss", "dino_center", "dino_loss", "effective_rank", "embedding_std", "info_nce",
           "info_nce_logits", "mocov3_logits", "mocov3_loss", "negative_cosine", "nt_xent", "nt_xent_logits",
           "reconstruction_mse", "simcse_logits", "simcse_loss", "teacher_temperature", "top1", "vicreg"]
