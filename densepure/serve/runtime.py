"""A server's state, independent of HTTP: options, the engine loops, metrics, jobs, and the answers they make.

:class:`Runtime` turns a parsed request into a :class:`~densepure.serve.work.Work` and a decided work into
the output tensors and the response body; the routes (:mod:`densepure.serve.app`) only move bytes. Its
``loop`` is a :class:`~densepure.serve.devices.DeviceGroup`: one engine loop per device (one, by default).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from densepure import __version__
from densepure.certify.job import build_engine
from densepure.certify.tasks import Task
from densepure.diffusion import Mode
from densepure.engine.engine import Engine
from densepure.errors import DensePureError, InputError
from densepure.noise import added_failure, sound_table
from densepure.noise.sound import grid_indices
from densepure.serve.devices import DeviceGroup, cpu_threads, device_labels, resolve_devices
from densepure.serve.jobs import JobStore
from densepure.serve.loop import EngineLoop, LoopState, Work, WorkResult
from densepure.serve.metrics import ServeMetrics
from densepure.serve.params import (
    RequestParams,
    ServeMode,
    ServerDefaults,
    parse_params,
    task_for,
)
from densepure.serve.protocol import OUTPUTS, InferRequest, OutputRequest, Tensor
from densepure.serve.settings import ServeOptions
from densepure.serve.stats import ModelStats

MODEL_VERSION = "1"
DEFAULT_OUTPUTS = {ServeMode.PREDICT: ("label", "draws"), ServeMode.CERTIFY: ("label", "radius", "draws"),
                   ServeMode.CERTIFY_RADIUS: ("label", "certified", "radius", "draws"),
                   ServeMode.CERTIFY_ANYTIME: ("label", "radius", "draws")}


@dataclass(frozen=True)
class Prepared:
    """A checked request, ready to run: its parameters, task and the outputs to send (name -> binary)."""

    request: InferRequest
    params: RequestParams
    task: Task
    outputs: dict[str, bool]


class Runtime:
    """Everything a server holds; ``engine_factory(device)`` (default: :func:`build_engine` of the options on
    that device) is called on each device's engine loop thread. ``build`` adds labels to
    ``densepure_build_info`` (a Ray replica's name)."""

    def __init__(self, options: ServeOptions, engine_factory: Callable[[str], Engine] | None = None,
                 build: dict[str, str] | None = None):
        from densepure.models import get_preset

        self.options, self.limits = options, options.limits
        self.replica = (build or {}).get("replica")
        self.image_shape = options.image_shape()
        job = options.job
        self.smoothing = job.smoothing_config(get_preset(job.models.preset).schedule)
        sampling, run = job.sampling, job.execution
        self.defaults = ServerDefaults(sampling.n0, sampling.n, sampling.alpha, self.smoothing.sigma, self.limits.max_n0,
                                       self.limits.max_n, self.limits.max_batch, self.limits.allow_client_seed)
        self.devices = resolve_devices(options.placement.devices, run.device)
        self.metrics = ServeMetrics({"version": __version__, "torch": torch.__version__, "model": self.model_name,
                                     "mode": self.smoothing.mode.value, "backend": run.backend.value,
                                     "precision": run.precision.value, "device": ",".join(self.devices),
                                     **(build or {})})
        self.on_fatal: Callable[[BaseException], None] | None = None
        self.loop = self._device_group(engine_factory or self._build_engine)
        self.jobs = JobStore(self.loop, self.limits.max_jobs, self.limits.job_ttl_s)
        self.stats = ModelStats()

    def _build_engine(self, device: str) -> Engine:
        job = self.options.job
        if self.options.placement.devices:  # else the job's own --device, as given
            job = job.replace(device=device)
        return build_engine(job, self.image_shape, self.options.num_classes, image_slots=self.limits.image_slots)

    def _device_group(self, factory: Callable[[str], Engine]) -> DeviceGroup:
        """One engine loop per device, with its metrics, behind one :class:`DeviceGroup`."""
        labels, several = device_labels(self.devices), len(self.devices) > 1
        loops = []
        placement = self.options.placement
        setups = cpu_threads(self.devices, placement.device_threads, placement.pin_cores)
        for device, label, setup in zip(self.devices, labels, setups, strict=True):
            loop = EngineLoop(lambda device=device: factory(device), self.limits.max_queue,
                              self.limits.max_queued_draws, self.metrics.device(label), on_fatal=self._fatal,
                              setup=setup, name=label if several else None)
            self.metrics.device(label, queued=loop.queued_draws,
                                up=lambda loop=loop: float(loop.state is LoopState.READY))
            loops.append(loop)
        return DeviceGroup(loops, labels, self.options.placement.split_min_draws, self.options.job.execution.lookahead,
                           self.metrics)

    def _fatal(self, exc: BaseException) -> None:
        if self.on_fatal is not None:
            self.on_fatal(exc)

    @property
    def model_name(self) -> str:
        return self.options.model_name

    @property
    def ready(self) -> bool:
        return self.loop.state is LoopState.READY

    @property
    def num_classes(self) -> int | None:
        engine = self.loop.engine
        return None if engine is None else engine.num_classes

    # -- requests -------------------------------------------------------------------------------
    def prepare(self, request: InferRequest, job: bool = False) -> tuple[Prepared, list]:
        """Check a parsed request's parameters and outputs and make one policy per image (raises
        :class:`~densepure.errors.DensePureError` naming the problem: a 400)."""
        batch = request.images.shape[0]
        params = parse_params(request.parameters, self.defaults, batch, job=job)
        if job and params.binary_output:
            raise InputError("jobs return JSON: binary_data_output applies to infer only")
        task = task_for(params)
        if batch * task.max_draws > self.limits.max_queued_draws:
            raise InputError(f"this request may take {batch * task.max_draws} draws ({batch} image(s)); the "
                             f"server's cap on queued draws is {self.limits.max_queued_draws}")
        outputs = self._outputs(params, request.outputs, job)
        if self.smoothing.sound:  # an image off the grid is the client's error: 400, naming the grid
            for j, image in enumerate(request.images):
                grid_indices(torch.from_numpy(np.asarray(image)), self.smoothing.levels, name=f"image {j}")
        policies = [task.policy(self.num_classes, self.smoothing.sigma) for _ in range(batch)]
        return Prepared(request, params, task, outputs), policies

    def _outputs(self, params: RequestParams, requested: tuple[OutputRequest, ...] | None, job: bool) -> dict[str, bool]:
        available = set(DEFAULT_OUTPUTS[params.mode]) | {"counts"}
        if requested is None:
            return {name: params.binary_output for name in DEFAULT_OUTPUTS[params.mode]}
        for out in requested:
            if out.name not in available:
                raise InputError(f"output {out.name} is not produced in mode {params.mode.value}; "
                                 f"outputs: {', '.join(sorted(available))}")
            if job and out.binary:
                raise InputError("jobs return JSON: binary_data applies to infer only")
        return {out.name: out.binary or params.binary_output for out in requested}

    def work(self, prepared: Prepared, policies: list, on_done) -> Work:
        images = torch.from_numpy(np.ascontiguousarray(prepared.request.images))
        return Work(images, policies, prepared.task, on_done, prepared.task.max_draws, seed=prepared.params.seed,
                    noise_id=prepared.params.noise_id, priority=prepared.params.priority)

    def response(self, prepared: Prepared, result: WorkResult) -> tuple[dict, list[Tensor]]:
        """The response body (without outputs) and the output tensors of a decided request."""
        images = result.images
        tensors = {
            "label": Tensor("label", OUTPUTS["label"], np.array([o.label for o in images], dtype=np.int64)),
            "certified": Tensor("certified", OUTPUTS["certified"], np.array([o.label != -1 for o in images])),
            "radius": Tensor("radius", OUTPUTS["radius"], np.array([o.radius for o in images], dtype=np.float32)),
            "draws": Tensor("draws", OUTPUTS["draws"], np.array([o.draws for o in images], dtype=np.int64)),
            "counts": Tensor("counts", OUTPUTS["counts"], np.stack(
                [np.stack([o.selection_counts, o.estimation_counts]) for o in images]).astype(np.int64)),
        }
        body = {"model_name": self.model_name, "model_version": MODEL_VERSION,
                "parameters": self.echo(prepared.params, prepared.task)}
        if prepared.request.id is not None:
            body["id"] = prepared.request.id
        return body, [tensors[name] for name in prepared.outputs]

    def echo(self, params: RequestParams, task: Task) -> dict:
        """Response parameters: the smoothing configuration, the statistics and the method."""
        out = {"mode": params.mode.value, **self.smoothing_parameters(), "alpha": params.alpha,
               "method": task.procedure, "n": params.n}
        if params.n0 is not None:
            out["n0"] = params.n0
        if params.radius is not None:
            out["radius"] = params.radius
        if params.seed is not None:  # only a client's own seed is ever returned
            out.update(seed=params.seed, noise_id=params.noise_id)
        if self.smoothing.sound:  # the failure probability with the sound sampler's departure added
            out["effective_alpha"] = self.effective_alpha(params.alpha, task)
        return out

    def effective_alpha(self, alpha: float, task: Task) -> float:
        """``alpha`` plus what the sound noise's sampler adds for one image of ``task`` (docs/guarantees.md)."""
        table = sound_table(self.smoothing.levels, self.smoothing.noise_sigma())
        return math.nextafter(alpha + added_failure(table, math.prod(self.image_shape), task.max_draws), math.inf)

    def smoothing_parameters(self) -> dict:
        s = self.smoothing
        out = {"smoothing": s.mode.value, "sigma": s.sigma, "K": s.chains, "b": s.steps if s.mode is Mode.DENSEPURE
               else 1}
        if s.mode is not Mode.GAUSSIAN:
            out["t_star_rule"] = s.t_star_rule.value
        out["noise"] = s.noise.value
        if s.sound:
            out["levels"] = s.levels  # images must lie on the grid k / levels (UINT8 inputs: 255)
        return out

    # -- metadata -------------------------------------------------------------------------------
    def server_metadata(self) -> dict:
        return {"name": "densepure", "version": __version__,
                "extensions": ["binary_tensor_data", "parameters", "schedule_policy", "model_configuration",
                               "statistics", "model_repository"]}

    def model_metadata(self) -> dict:
        c, h, w = self.image_shape
        classes = self.num_classes if self.num_classes is not None else -1
        outputs = [{"name": name, "datatype": dtype, "shape": [-1] if name != "counts" else [-1, 2, classes]}
                   for name, dtype in OUTPUTS.items()]
        d, limits = self.defaults, self.limits
        return {
            "name": self.model_name, "versions": [MODEL_VERSION], "platform": "densepure",
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, c, h, w]}],
            "outputs": outputs,
            "parameters": {
                "smoothing": {**self.smoothing_parameters(), "alpha": d.alpha},
                "input_datatypes": ["FP32", "UINT8"],
                "modes": {m.value: list(DEFAULT_OUTPUTS[m]) for m in ServeMode},
                "default_mode": ServeMode.CERTIFY_RADIUS.value,
                "defaults": {"n0": d.n0, "n": d.n, "alpha": d.alpha, "radius": d.sigma},
                "limits": {"max_batch": limits.max_batch, "max_n0": limits.max_n0, "max_n": limits.max_n,
                           "max_body_bytes": limits.max_body_bytes, "max_queue": limits.max_queue,
                           "max_queued_draws": limits.max_queued_draws},
                "num_classes": classes,
                "client_seed": limits.allow_client_seed,
            },
        }


def state_message(state: LoopState, error: BaseException | None) -> str:
    """Why the server does not take work, in one line."""
    if state is LoopState.FAILED:
        detail = str(error) if isinstance(error, DensePureError) else type(error).__name__
        return f"the server failed and takes no work: {detail}"
    return {LoopState.LOADING: "the models are loading", LoopState.DRAINING: "the server is shutting down",
            LoopState.STOPPED: "the server has stopped"}.get(state, "the server is not ready")
