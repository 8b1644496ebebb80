"""Image preprocessing shared by both backbones.

:class:`ImagePreprocess` takes a PIL image, a ``uint8`` tensor ``[C, H, W]``
(0..255) or a float tensor ``[C, H, W]`` (0..1) and returns the normalised
float tensor the image tower expects. Grayscale inputs are repeated to three
channels. It is a plain picklable object, so it works in DataLoader workers
and as a per-modality transform of :func:`avalanche_mm.data.make_multimodal_dataset`.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

# OpenAI CLIP normalisation, used by most CLIP checkpoints
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


class ImagePreprocess:
    """Resize/crop/normalise an image for a vision-language backbone.

    Evaluation (``train=False``): resize the shorter side to ``size`` and
    centre-crop ``size x size``. Training (``train=True``): random resized
    crop with area ``scale`` (CLIP's default augmentation), deterministic
    given ``torch.manual_seed``. Both then normalise with ``mean``/``std``.

    :param size: output side length.
    :param mean: per-channel mean.
    :param std: per-channel standard deviation.
    :param train: apply the training augmentation.
    :param interpolation: ``"bicubic"`` (CLIP), ``"bilinear"`` or ``"nearest"``.
    :param scale: area range of the random resized crop (training only).
    """

    def __init__(
        self,
        *,
        size: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        train: bool = False,
        interpolation: str = "bicubic",
        scale: Tuple[float, float] = (0.9, 1.0),
    ):
        if int(size) <= 0:
            raise ValueError(f"ImagePreprocess: size must be a positive int, got {size!r}.")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"ImagePreprocess: interpolation must be one of {sorted(_INTERPOLATIONS)}, "
                f"got {interpolation!r}."
            )
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(
                f"ImagePreprocess: mean and std need 3 values (RGB), got {mean!r} and {std!r}."
            )
        lo, hi = scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"ImagePreprocess: scale must satisfy 0 < lo <= hi <= 1, got {scale}.")
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.train = bool(train)
        self.interpolation = interpolation
        self.scale = (float(lo), float(hi))

    def __repr__(self) -> str:
        return (
            f"ImagePreprocess(size={self.size}, train={self.train}, "
            f"interpolation={self.interpolation!r}, mean={self.mean}, std={self.std})"
        )

    def to_float_tensor(self, image) -> Tensor:
        """Convert a PIL image / uint8 / float tensor into float ``[3, H, W]`` in 0..1."""
        if isinstance(image, Tensor):
            img = image
        elif hasattr(image, "convert"):  # PIL image
            img = TF.pil_to_tensor(image.convert("RGB"))
        else:
            raise TypeError(
                "ImagePreprocess expects a PIL image or a tensor [C, H, W], got "
                f"{type(image).__name__}."
            )
        if img.dim() == 2:
            img = img.unsqueeze(0)
        if img.dim() != 3 or img.shape[0] not in (1, 3):
            raise ValueError(
                "ImagePreprocess expects an image tensor [C, H, W] with C in (1, 3), got shape "
                f"{tuple(img.shape)}."
            )
        if img.dtype == torch.uint8:
            img = img.float() / 255.0
        elif img.is_floating_point():
            img = img.float()
        else:
            raise TypeError(
                f"ImagePreprocess expects uint8 (0..255) or float (0..1) pixels, got {img.dtype}."
            )
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        return img

    def __call__(self, image) -> Tensor:
        img = self.to_float_tensor(image)
        interp = _INTERPOLATIONS[self.interpolation]
        if self.train:
            i, j, h, w = _random_resized_crop_params(img, self.scale)
            img = TF.resized_crop(img, i, j, h, w, [self.size, self.size], interp, antialias=True)
        else:
            if min(img.shape[-2:]) != self.size:
                img = TF.resize(img, self.size, interp, antialias=True)
            if tuple(img.shape[-2:]) != (self.size, self.size):
                img = TF.center_crop(img, [self.size, self.size])
        return TF.normalize(img, self.mean, self.std)


def _random_resized_crop_params(img: Tensor, scale: Tuple[float, float]):
    """Crop box with a random area fraction in ``scale`` and aspect ratio 3/4..4/3."""
    height, width = img.shape[-2:]
    area = height * width
    log_ratio = torch.log(torch.tensor([3.0 / 4.0, 4.0 / 3.0]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round((target * ratio) ** 0.5))
        h = int(round((target / ratio) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,)).item())
            j = int(torch.randint(0, width - w + 1, (1,)).item())
            return i, j, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


__all__ = ["ImagePreprocess", "CLIP_MEAN", "CLIP_STD"]
