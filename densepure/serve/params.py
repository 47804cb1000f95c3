"""A request's parameters, checked against the server's defaults and caps, and the task they make.

OIP v2 request ``parameters`` (all optional):

* ``mode``: ``certify_radius`` (default; is the requested ``radius`` certified, sequential test),
  ``certify`` (Cohen's CERTIFY), ``certify_anytime`` (the anytime-valid radius over ``n`` estimation
  draws: a job streams it as it grows) or ``predict`` (Cohen's PREDICT);
* ``alpha`` (at most the server's), ``n0`` (certify modes), ``n`` (CERTIFY/PREDICT draws, or the
  sequential test's largest n), ``radius`` (certify_radius; default sigma);
* ``deadline_ms`` (infer only), or Triton's ``timeout`` in microseconds (the same deadline; 0 is none);
* ``priority`` (Triton's schedule policy): 1 (first) to :data:`PRIORITY_LEVELS` (last); 0 or absent is
  :data:`DEFAULT_PRIORITY`. Queued requests enter the engine by priority, first come first served within
  one; images already in the engine keep their slots. A client may choose any priority: it orders
  cooperating clients, it is no access control;
* ``seed`` and ``noise_id`` (only with ``--allow-client-seed``): image ``j`` of the request is drawn
  with the noise identity ``(seed, noise_id + j)``, exactly as ``densepure certify --seed`` keys
  dataset image ``noise_id + j``;
* ``binary_data_output`` (the binary tensor extension).

:func:`task_for` is the one place a request becomes a :mod:`densepure.certify.tasks` task.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

from densepure.certify.tasks import AnytimeTask, CertifyTask, PredictTask, SequentialTask, Task
from densepure.errors import InputError
from densepure.noise import IMAGE_BITS, SEED_BITS

MAX_DEADLINE_MS = 24 * 3600 * 1000
PRIORITY_LEVELS = 9
DEFAULT_PRIORITY = 5


class ServeMode(enum.Enum):
    """What a request asks for."""

    CERTIFY_RADIUS = "certify_radius"
    CERTIFY = "certify"
    CERTIFY_ANYTIME = "certify_anytime"
    PREDICT = "predict"


@dataclass(frozen=True)
class ServerDefaults:
    """The server's side of a request: defaults (``n0``, ``n``, ``alpha``: also the largest alpha),
    ``sigma`` (the default radius), caps and whether a client may choose the noise."""

    n0: int
    n: int
    alpha: float
    sigma: float
    max_n0: int
    max_n: int
    max_batch: int
    allow_client_seed: bool


@dataclass(frozen=True)
class RequestParams:
    """A request's parameters, complete (defaults filled in) and valid for ``batch`` images."""

    mode: ServeMode
    alpha: float
    n0: int | None  # None for predict
    n: int
    radius: float | None  # certify_radius only
    deadline_ms: float | None
    seed: int | None  # the client's, only with --allow-client-seed
    noise_id: int
    binary_output: bool
    priority: int = DEFAULT_PRIORITY  # 1 enters the engine first


_COMMON = {"mode", "alpha", "n", "seed", "noise_id", "binary_data_output", "priority"}
_DEADLINES = {"deadline_ms", "timeout"}
_ALLOWED = {ServeMode.CERTIFY_RADIUS: _COMMON | {"n0", "radius"}, ServeMode.CERTIFY: _COMMON | {"n0"},
            ServeMode.CERTIFY_ANYTIME: _COMMON | {"n0"}, ServeMode.PREDICT: set(_COMMON)}


def _int(name: str, value: object, low: int, high: int, cap: str = "") -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise InputError(f"parameter {name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InputError(f"parameter {name} must be in [{low}, {high}]{cap}, got {value}")
    return int(value)


def _real(name: str, value: object) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise InputError(f"parameter {name} must be a finite number, got {value!r}")
    return float(value)


def parse_params(raw: Mapping[str, object], server: ServerDefaults, batch: int, job: bool = False) -> RequestParams:
    """Check ``raw`` (the request's ``parameters``) for ``batch`` images; raise :class:`InputError` naming
    the problem (an unknown or misplaced parameter, a wrong type, a value over a cap)."""
    if not isinstance(raw, Mapping):
        raise InputError(f"parameters must be a JSON object, got {type(raw).__name__}")
    mode_value = raw.get("mode", ServeMode.CERTIFY_RADIUS.value)
    try:
        mode = ServeMode(mode_value)
    except ValueError:
        raise InputError(f"parameter mode must be one of {', '.join(m.value for m in ServeMode)}, "
                         f"got {mode_value!r}") from None
    allowed = _ALLOWED[mode] | (set() if job else _DEADLINES)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InputError(f"unknown parameter {unknown[0]!r} for mode {mode.value}"
                         f"{f' (jobs take no {unknown[0]})' if job and unknown[0] in _DEADLINES else ''}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    alpha = _real("alpha", raw.get("alpha", server.alpha))
    if not 0 < alpha <= server.alpha:
        raise InputError(f"parameter alpha must be in (0, {server.alpha}] (the server's alpha), got {alpha}")
    n0 = None if mode is ServeMode.PREDICT else _int("n0", raw.get("n0", server.n0), 1, server.max_n0,
                                                      " (the server's cap)")
    n = _int("n", raw.get("n", server.n), 1, server.max_n, " (the server's cap)")
    radius = None
    if mode is ServeMode.CERTIFY_RADIUS:
        radius = _real("radius", raw.get("radius", server.sigma))
        if radius < 0:
            raise InputError(f"parameter radius must be >= 0, got {radius}")
    deadline = _deadline(raw)
    priority = _int("priority", raw.get("priority", 0), 0, PRIORITY_LEVELS, " (0: the default)") or DEFAULT_PRIORITY
    seed, noise_id = raw.get("seed"), raw.get("noise_id", 0)
    if ("seed" in raw or "noise_id" in raw) and not server.allow_client_seed:
        raise InputError("parameters seed and noise_id are accepted only when the server runs with "
                         "--allow-client-seed (the noise seed is secret otherwise)")
    if seed is not None:
        seed = _int("seed", seed, 0, (1 << SEED_BITS) - 1)
    noise_id = _int("noise_id", noise_id, 0, (1 << IMAGE_BITS) - batch, f" for {batch} image(s)")
    binary = raw.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise InputError(f"parameter binary_data_output must be true or false, got {binary!r}")
    return RequestParams(mode, alpha, n0, n, radius, deadline, seed, noise_id, binary, priority)


def _deadline(raw: Mapping[str, object]) -> float | None:
    """``deadline_ms``, or Triton's ``timeout`` (microseconds, 0: none) in milliseconds; None: no deadline."""
    if "deadline_ms" in raw and "timeout" in raw:
        raise InputError("parameters deadline_ms and timeout are the same deadline: give one")
    if "timeout" in raw:
        timeout = _int("timeout", raw["timeout"], 0, MAX_DEADLINE_MS * 1000, " microseconds (0: none)")
        return timeout / 1000 if timeout else None
    deadline = raw.get("deadline_ms")
    if deadline is not None:
        deadline = _real("deadline_ms", deadline)
        if not 0 < deadline <= MAX_DEADLINE_MS:
            raise InputError(f"parameter deadline_ms must be in (0, {MAX_DEADLINE_MS}], got {deadline}")
    return deadline


def task_for(params: RequestParams) -> Task:
    """The certification task of a request: the one place to change which procedure a mode runs
    (certify_radius runs :class:`SequentialTask`, whichever sequential test that class implements)."""
    if params.mode is ServeMode.PREDICT:
        return PredictTask(params.n, params.alpha)
    if params.mode is ServeMode.CERTIFY:
        return CertifyTask(params.n0, params.n, params.alpha)
    if params.mode is ServeMode.CERTIFY_ANYTIME:
        return AnytimeTask(params.n0, params.n, params.alpha)
    return SequentialTask(params.n0, params.radius, params.alpha, n_max=params.n)
