"""Small models for engine tests: a random micro UNet of the official family and a noise-sensitive
classifier, both fast on the CPU."""

import torch
from torch import nn

from densepure.diffusion import NoiseSchedule
from densepure.engine.backends import ClassifierBackend
from densepure.models import UNetConfig, UNetModel

SCHEDULE = NoiseSchedule("cosine", 4000)
CLASSES = 3


class PatchSign(nn.Module):
    """Labels that depend on the noise: argmax of random projections of 2x2 patch means."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(CLASSES, 3 * 4 * 4, generator=g), requires_grad=False)

    def forward(self, x):
        return nn.functional.avg_pool2d(x, 2).flatten(1) @ self.w.T


def micro_unet():
    """An 8x8 UNet of the official family with random (non-zero) weights: fast on CPU."""
    torch.manual_seed(0)
    cfg = UNetConfig(image_size=8, model_channels=32, num_res_blocks=1, attention_resolutions=(4,),
                     channel_mult=(1, 2), num_heads=2)
    model = UNetModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


class Recording(ClassifierBackend):
    """Passes calls through to ``inner`` and keeps every row's argmax label, in call order."""

    name = "recording"

    def __init__(self, inner: ClassifierBackend):
        super().__init__(inner.device, inner.num_classes, inner.image_shape)
        self.inner, self.labels = inner, []

    def _activate_impl(self) -> None:
        self.inner.__enter__()

    def _deactivate_impl(self) -> None:
        self.inner.__exit__(None, None, None)

    def _logits_impl(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner.logits(x)
        self.labels.append(logits.argmax(dim=1).numpy())
        return logits
