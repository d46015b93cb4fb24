"""Batched, on-device augmentations ("views") with per-sample random parameters.

``ops`` holds the pure batched ops (each equal to torchvision's functional op per sample; the colour jitter's
are in ``jitter``), ``recipes`` the view recipes used by the methods, ``preview`` a PNG preview of a recipe.
"""
from .ops import (adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, color_jitter,
                  gaussian_blur, hflip, normalize, random_color_jitter, random_gaussian_blur, random_grayscale,
                  random_hflip, random_resized_crop, random_resized_crop_params, random_solarize, resized_crop,
                  solarize, to_float, to_grayscale)
from .preview import save_preview
from .recipes import (FinetuneViews, SimCLRViews, byol_views, default_blur_kernel, finetune_views, moco_v2_views,
                      simclr_views)

__all__ = [
    "adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation", "color_jitter", "gaussian_blur",
    "hflip", "normalize", "random_color_jitter", "random_gaussian_blur", "random_grayscale", "random_hflip",
    "random_resized_crop", "random_resized_crop_params", "random_solarize", "resized_crop", "solarize",
    "to_float", "to_grayscale", "save_preview", "FinetuneViews", "SimCLRViews", "byol_views",
    "default_blur_kernel", "finetune_views", "moco_v2_views", "simclr_views",
]
