"""What a server runs and what it allows: :class:`ServerLimits` and :class:`ServeOptions` (frozen, validated)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from densepure.certify.job import JobOptions
from densepure.errors import ConfigError


def _positive(name: str, value: object, kind: type = int) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
    if not ok or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number'} > 0, got {value!r}")


@dataclass(frozen=True)
class ServerLimits:
    """Caps that keep one client from taking the server, and the backpressure bounds.

    ``max_body_bytes``: request body (413 above). ``max_batch``: images per request. ``max_n0``/``max_n``:
    draws a request may ask for (selection; estimation, or the sequential test's n_max). ``max_queue``:
    requests waiting for engine slots; ``max_queued_draws``: the worst-case draws of every accepted,
    undecided request together (beyond either: 503 with Retry-After). ``image_slots``: images in the
    engine at once (1 runs one image at a time). ``max_jobs``/``job_ttl_s``: retained jobs and how long
    an unfetched result is kept. ``grace_s``: SIGTERM drain period. ``allow_client_seed``: accept
    ``seed``/``noise_id`` (reproducibility audits only: a known seed lets an attacker search the noise).
    """

    max_body_bytes: int = 64 * 2**20
    max_batch: int = 64
    max_n0: int = 10_000
    max_n: int = 100_000
    max_queue: int = 256
    max_queued_draws: int = 4_000_000
    image_slots: int = 64
    max_jobs: int = 1024
    job_ttl_s: float = 3600.0
    grace_s: float = 25.0
    allow_client_seed: bool = False

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_batch", "max_n0", "max_n", "max_queue", "max_queued_draws",
                     "image_slots", "max_jobs"):
            _positive(name, getattr(self, name))
        for name in ("job_ttl_s", "grace_s"):
            _positive(name, getattr(self, name), float)
        if self.max_batch >= 1 << 24:
            raise ConfigError(f"max_batch must be < 2**24 (the noise key's image field), got {self.max_batch}")


@dataclass(frozen=True)
class ServeOptions:
    """A server: the models and smoothing of ``job`` (its ``n0``, ``n``, ``alpha`` are the request defaults;
    ``alpha`` is also the largest a request may ask for), the limits, and where it listens."""

    job: JobOptions = field(default_factory=JobOptions)
    limits: ServerLimits = field(default_factory=ServerLimits)
    host: str = "127.0.0.1"
    port: int = 8000
    num_classes: int | None = None
    access_log: bool = True
    log_level: str = "info"

    def __post_init__(self) -> None:
        from densepure.models import get_preset

        # the noise: sound on the preset's grid (its data: 8-bit images, the digits) unless told otherwise
        object.__setattr__(self, "job", self.job.resolved(get_preset(self.job.preset).levels))
        if self.job.predict or self.job.radius is not None or self.job.also_chains or self.job.budget is not None:
            raise ConfigError("a server takes its mode per request: leave predict, radius, budget and also_chains unset")
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in [0, 65535], got {self.port!r}")
        if self.job.n0 > self.limits.max_n0 or self.job.n > self.limits.max_n:
            raise ConfigError(f"the default n0={self.job.n0}, n={self.job.n} must be within the caps "
                              f"max_n0={self.limits.max_n0}, max_n={self.limits.max_n}")

    @property
    def model_name(self) -> str:
        """The OIP model name: the preset's (``digits`` for the default)."""
        return self.job.preset

    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the preset's images."""
        from densepure.models import get_preset

        preset = get_preset(self.job.preset)
        return (int(preset.unet_config.in_channels), preset.image_size, preset.image_size)
