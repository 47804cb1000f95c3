"""What a server runs and what it allows: :class:`ServerLimits`, :class:`Placement` (the devices of one
process), :class:`ReplicaOptions` (replicas on Ray Serve) and :class:`ServeOptions` (frozen, validated)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

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

    The HTTP layer (:mod:`densepure.serve.http11`): ``max_connections`` open at once (a connection past it
    is answered 503 with Retry-After and closed); ``read_timeout_s``, the time a request's headers and
    body may take to arrive, from its first byte (past it: 408 and the connection is closed);
    ``keep_alive_s``, how long an idle keep-alive connection stays open.
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
    max_connections: int = 512
    read_timeout_s: float = 30.0
    keep_alive_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_batch", "max_n0", "max_n", "max_queue", "max_queued_draws",
                     "image_slots", "max_jobs", "max_connections"):
            _positive(name, getattr(self, name))
        for name in ("job_ttl_s", "grace_s", "read_timeout_s", "keep_alive_s"):
            _positive(name, getattr(self, name), float)
        if self.max_batch >= 1 << 24:
            raise ConfigError(f"max_batch must be < 2**24 (the noise key's image field), got {self.max_batch}")


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class Placement:
    """The devices of one server process (``--devices``): one engine loop per device, behind one endpoint.

    ``devices``: empty serves the one ``--device`` of the job; otherwise each of ``cpu``, ``cuda``, ``cuda:N``
    (a device may repeat: two loops on one device), or ``("all",)`` for every CUDA device of the machine.
    ``device_threads``: torch threads of each CPU engine loop (default: the cores shared equally among the CPU
    loops when there are several, else torch's default). ``pin_cores``: each CPU loop runs on cores of its
    own (when there are enough): steadier on a machine of its own, slower on a shared one, where a pinned
    loop cannot leave a core another program keeps busy. ``split_min_draws``: a request whose images may each take at least this many
    draws has its draws split across the devices when that is expected to answer it sooner (0: never split;
    :mod:`densepure.serve.devices` has the rule).
    """

    devices: tuple[str, ...] = ()
    device_threads: int | None = None
    pin_cores: bool = False
    split_min_draws: int = 10_000

    def __post_init__(self) -> None:
        devices = tuple(self.devices)
        object.__setattr__(self, "devices", devices)
        if devices == ("all",):
            pass
        elif "all" in devices:
            raise ConfigError(f"devices: 'all' stands alone (every CUDA device), got {','.join(devices)}")
        else:
            for name in devices:
                if not isinstance(name, str) or not _DEVICE.fullmatch(name):
                    raise ConfigError(f"devices must be cpu, cuda or cuda:N each (or all), got {name!r}")
        if self.device_threads is not None:
            _positive("device_threads", self.device_threads)
        if isinstance(self.split_min_draws, bool) or not isinstance(self.split_min_draws, int) or \
                self.split_min_draws < 0:
            raise ConfigError(f"split_min_draws must be an integer >= 0 (0: never split), got {self.split_min_draws!r}")


@dataclass(frozen=True)
class ReplicaOptions:
    """Replicas of the server on Ray Serve (``--ray``): ``ray`` is ``local``, ``auto`` or a cluster address
    (None: no Ray). ``replicas``: how many to start (None: one per GPU of the cluster, or one without GPUs).
    Autoscaling on queued requests between ``min_replicas`` and ``max_replicas`` when either is given (the
    other defaults to ``replicas``): Serve aims at ``target_requests`` requests in flight or queued per
    replica, and removes a replica after ``downscale_delay_s`` below target (it drains first)."""

    ray: str | None = None
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_requests: float = 8.0
    downscale_delay_s: float = 600.0

    def __post_init__(self) -> None:
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            raise ConfigError(f"ray must be local, auto or a cluster address, got {self.ray!r}")
        for name in ("replicas", "min_replicas", "max_replicas"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _positive("target_requests", self.target_requests, float)
        _positive("downscale_delay_s", self.downscale_delay_s, float)
        if self.ray is None and (self.replicas, self.min_replicas, self.max_replicas) != (None, None, None):
            raise ConfigError("replicas, min_replicas and max_replicas apply to a server on Ray: give --ray too")
        low, high = self.min_replicas, self.max_replicas
        start = self.replicas
        if low is not None and high is not None and low > high:
            raise ConfigError(f"min_replicas ({low}) must be <= max_replicas ({high})")
        if start is not None and ((low is not None and start < low) or (high is not None and start > high)):
            raise ConfigError(f"replicas ({start}) must lie between min_replicas ({low}) and max_replicas ({high})")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None


@dataclass(frozen=True)
class ServeOptions:
    """A server: the models and smoothing of ``job`` (its ``n0``, ``n``, ``alpha`` are the request defaults;
    ``alpha`` is also the largest a request may ask for), the limits, and where it listens."""

    job: JobOptions = field(default_factory=JobOptions)
    limits: ServerLimits = field(default_factory=ServerLimits)
    placement: Placement = field(default_factory=Placement)
    cluster: ReplicaOptions = field(default_factory=ReplicaOptions)
    host: str = "127.0.0.1"
    port: int = 8000
    num_classes: int | None = None
    access_log: bool = True
    log_level: str = "info"

    def __post_init__(self) -> None:
        from densepure.models import get_preset

        # the noise: sound on the preset's grid (its data: 8-bit images, the digits) unless told otherwise
        object.__setattr__(self, "job", self.job.resolved(get_preset(self.job.models.preset).levels))
        sampling = self.job.sampling
        if sampling.predict or sampling.radius is not None or sampling.also_chains or sampling.budget is not None:
            raise ConfigError("a server takes its mode per request: leave predict, radius, budget and also_chains unset")
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in [0, 65535], got {self.port!r}")
        if sampling.n0 > self.limits.max_n0 or sampling.n > self.limits.max_n:
            raise ConfigError(f"the default n0={sampling.n0}, n={sampling.n} must be within the caps "
                              f"max_n0={self.limits.max_n0}, max_n={self.limits.max_n}")
        if self.placement.devices and self.job.execution.device != "auto":
            raise ConfigError(f"give --device or --devices, not both (got --device {self.job.execution.device} and "
                              f"--devices {','.join(self.placement.devices)})")
        if self.placement.devices and self.cluster.ray is not None:
            raise ConfigError("--devices and --ray do not combine: a Ray replica serves one device (one replica per "
                              "GPU); use --device")

    @classmethod
    def build(cls, **values: object) -> ServeOptions:
        """A server from flat option names: the job's (:meth:`JobOptions.build`), the limits', the placement's,
        the replicas' and the server's own fields, each routed to the record that owns it (the CLI builds
        ``densepure serve`` this way; ``ray`` is the server's, not the certify job's)."""
        records = {"limits": ServerLimits, "placement": Placement, "cluster": ReplicaOptions}
        own = {f.name for f in fields(cls)} - {"job", *records}
        parts = {name: {k: v for k, v in values.items() if k in {f.name for f in fields(record)}}
                 for name, record in records.items()}
        taken = own.union(*(set(p) for p in parts.values()))
        job = {k: v for k, v in values.items() if k not in taken}
        return cls(job=JobOptions.build(**job), **{name: records[name](**parts[name]) for name in records},
                   **{k: v for k, v in values.items() if k in own})

    @property
    def model_name(self) -> str:
        """The OIP model name: the preset's (``digits`` for the default)."""
        return self.job.models.preset

    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the preset's images."""
        from densepure.models import get_preset

        preset = get_preset(self.job.models.preset)
        return (int(preset.unet_config.in_channels), preset.image_size, preset.image_size)
