"""``--compile``: ``torch.compile`` of the UNet and the classifier, composed with the engine's CUDA graphs.

How it composes with :class:`densepure.engine.backends.graphs.BucketedCall` (one CUDA graph per
batch-size bucket, captured by the engine):

* Compile **in place** (:meth:`torch.nn.Module.compile`), so that methods such as
  ``UNetModel.eps_and_var``, which call ``self(...)``, run the compiled forward.
* Only modes **without** Inductor's own CUDA graphs (``default``, ``max-autotune-no-cudagraphs``):
  ``reduce-overhead`` / ``max-autotune`` replay cudagraph trees whose static outputs are overwritten
  by the next replay and cannot be captured inside the engine's graph. The engine's graph owns the
  replay; its outputs are copied out of the graph pool after each replay (``BucketedCall`` already
  does), so no static buffer is read after the next step.
* Static shapes, one compilation per bucket: every bucket is run (warm-up, outside capture) before
  it is captured, and that warm-up compiles; ``recompile_limit`` is raised to the number of buckets
  (dynamo's default of 8 would silently fall back to eager for the rest). Warm-up, capture and
  replay must all run under ``torch.inference_mode()`` (grad mode is part of dynamo's guards).
* The Triton GroupNorm+SiLU kernel is a registered custom op, so a UNet with
  :meth:`~densepure.models.unet.UNetModel.set_kernels` compiles without graph breaks around it.
"""

from __future__ import annotations

from torch import nn

from densepure.choices import Choice
from densepure.errors import ConfigError

__all__ = ["CompileMode", "compile_module"]


class CompileMode(Choice, what="compile mode",
                  hint=" (modes with their own CUDA graphs cannot run inside the engine's)"):
    """``torch.compile`` modes that leave CUDA graphs to the engine."""

    DEFAULT = "default"
    MAX_AUTOTUNE = "max-autotune-no-cudagraphs"


def compile_module(module: nn.Module, mode: CompileMode | str = CompileMode.DEFAULT, shapes: int = 16) -> nn.Module:
    """Compile ``module`` in place for up to ``shapes`` distinct input shapes (one per bucket); returns it.

    Compilation itself happens at the first call of each shape. The module must already be in its
    final precision, memory format, device and ``eval()`` state (each is baked into the compiled code).
    """
    mode = CompileMode.parse(mode)
    if isinstance(shapes, bool) or not isinstance(shapes, int) or shapes < 1:
        raise ConfigError(f"shapes must be an int >= 1, got {shapes!r}")
    import torch._dynamo.config as dynamo_config

    # process-wide: one compilation per bucket must not hit the limit and fall back to eager
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, shapes)
    module.compile(mode=mode.value, dynamic=False)
    return module
