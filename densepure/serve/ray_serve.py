"""``densepure serve --ray``: the same FastAPI app as replicas of a Ray Serve deployment, behind Serve's proxy.

The driver (:func:`run_ray_server`) connects to Ray (``local`` starts an instance on this machine that dies
with the driver, :mod:`densepure.distributed.cluster`), starts Serve's HTTP proxy on ``--host``/``--port``,
creates the job board (:mod:`densepure.serve.ray_jobs`), and deploys :class:`Replica` with Serve's FastAPI
ingress: each replica builds its own :class:`~densepure.serve.runtime.Runtime` (the models loaded once, on
the GPU Ray gave it, or on CPU) and serves :func:`~densepure.serve.app.create_app`'s routes, so the
protocol is the single server's: health, metadata, infer, jobs, metrics (each replica's own; answers carry
``X-Densepure-Replica``, and ``densepure_build_info`` its name and pid).

* Placement: one replica per GPU (``num_gpus=1``) where the cluster has GPUs, else CPU replicas that leave a
  CPU slot free (:func:`~densepure.distributed.cluster.plan_workers`). A replica is routed to only once its
  models are loaded and warm (its constructor waits), so the proxy never sends work to a cold one.
* Autoscaling (``--min-replicas``/``--max-replicas``): Serve's, on requests queued or in flight per replica
  (``--target-requests``), with ``--downscale-delay``.
* Graceful scale-down: Serve stops routing to the replica and waits for its requests in flight; then its
  jobs run on for up to ``--grace-period`` (Serve's shutdown budget is set above it), and what is left
  is reported failed on the board.
* A replica lost mid-request: that request alone is answered 503 with Retry-After by the proxy
  (:mod:`densepure.serve.ray_proxy`); Serve starts a replacement; its jobs read failed on the board.

The driver runs until SIGTERM or SIGINT, then deletes the application (its replicas drain) and the board.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from typing import Any

from densepure.distributed.cluster import LOCAL, ClusterError, connect, plan_workers, require_ray
from densepure.errors import DensePureError, install_hint
from densepure.serve.ray_jobs import NAMESPACE, JobBoard, SharedJobs
from densepure.serve.ray_proxy import CALLBACK, CALLBACK_VARIABLE
from densepure.serve.settings import Placement, ServeOptions

log = logging.getLogger("densepure.serve")
APP = "densepure"
SERVE_HINT = f"{install_hint('ray')} (Ray Serve: ray[serve])"
LOAD_TIMEOUT_S = 1800.0  # a replica's models: loading and warm-up


class Replica:
    """One replica: a :class:`~densepure.serve.runtime.Runtime` on the replica's device, its app built by
    Serve's ingress (``__serve_build_asgi_app__``), its jobs on the board named ``board``."""

    def __init__(self, options: ServeOptions, board: str):
        from ray import serve

        from densepure.serve.runtime import Runtime

        context = serve.get_replica_context()
        name = getattr(getattr(context, "replica_id", None), "unique_id", None) or context.replica_tag
        self.runtime = Runtime(options, build={"replica": str(name), "pid": str(os.getpid())})
        import ray

        local = self.runtime.jobs
        self.runtime.jobs = SharedJobs(local, ray.get_actor(board, namespace=NAMESPACE), str(name))
        loop = self.runtime.loop
        loop.start()  # ready before Serve routes here: the constructor returns once the models are warm
        if not loop.wait_ready(LOAD_TIMEOUT_S):
            loop.stop()
            error = loop.load_error
            detail = str(error) if isinstance(error, DensePureError) else f"{type(error).__name__}: {error}"
            raise DensePureError(f"replica {name} could not load the models: {detail}")

    def __serve_build_asgi_app__(self):
        from densepure.serve.app import create_app

        return create_app(self.runtime)

    def check_health(self) -> None:
        """Serve replaces a replica whose every device failed (a model returned NaN)."""
        from densepure.serve.loop import LoopState
        from densepure.serve.runtime import state_message

        loop = self.runtime.loop
        if loop.state is LoopState.FAILED:
            raise RuntimeError(state_message(loop.state, loop.load_error))


def deployment_options(options: ServeOptions, available: dict) -> tuple[ServeOptions, dict]:
    """The replicas' options (their device) and Serve's deployment settings, for a cluster with
    ``available`` resources (``ray.available_resources()``)."""
    cluster, run = options.cluster, options.job.execution
    gpus, cpus = float(available.get("GPU", 0.0)), float(available.get("CPU", 0.0))
    use_gpu = run.device.startswith("cuda") or (run.device == "auto" and gpus >= 1)
    count = cluster.replicas or (max(1, int(gpus)) if use_gpu else 1)
    plan = plan_workers(run.device, count, cpus, gpus, options.placement.device_threads)
    replica = replace(options, job=options.job.replace(device=plan.device),
                      placement=Placement(device_threads=plan.threads if plan.device == "cpu" else None))
    settings: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": plan.num_cpus, "num_gpus": plan.num_gpus},
        "max_ongoing_requests": options.limits.max_queue + options.limits.image_slots,
        "graceful_shutdown_wait_loop_s": 0.5,
        "graceful_shutdown_timeout_s": options.limits.grace_s + 10.0,
        "health_check_period_s": 5.0, "health_check_timeout_s": 60.0,
    }
    if cluster.autoscaling:
        low = cluster.min_replicas if cluster.min_replicas is not None else min(count, cluster.max_replicas)
        high = cluster.max_replicas if cluster.max_replicas is not None else max(count, low)
        settings["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": high, "initial_replicas": min(max(count, low), high),
            "target_ongoing_requests": cluster.target_requests, "downscale_delay_s": cluster.downscale_delay_s,
            "upscale_delay_s": 2.0, "metrics_interval_s": 1.0, "look_back_period_s": 2.0}
    else:
        settings["num_replicas"] = count
    return replica, settings


def run_ray_server(options: ServeOptions) -> int:
    """Deploy on Ray Serve and serve until SIGTERM/SIGINT; 0 after the replicas drained."""
    require_ray()
    try:
        from ray import serve
    except ImportError as exc:
        raise ClusterError(f"--ray needs Ray Serve, which is not installed here: {SERVE_HINT}") from exc
    address = options.cluster.ray
    if address == LOCAL:  # the proxy answers 503 for a lost replica (this process's environment reaches Ray's)
        os.environ.setdefault(CALLBACK_VARIABLE, CALLBACK)
    with connect(address) as ray:
        stop = _stop_event()  # after ray.init, which installs a SIGTERM handler of its own
        replica_options, settings = deployment_options(options, ray.available_resources())
        board_name = f"densepure-jobs-{os.getpid()}"
        board = ray.remote(JobBoard).options(name=board_name, namespace=NAMESPACE, lifetime="detached",
                                             num_cpus=0).remote(options.limits.job_ttl_s)
        try:
            serve.start(http_options={"host": options.host, "port": options.port},
                        proxy_location="HeadOnly" if address == LOCAL else "EveryNode")
            deployment = serve.deployment(name=APP, **settings)(serve.ingress()(Replica))
            started = time.monotonic()
            print(f"densepure serve: deploying on Ray Serve ({address}): {_describe(settings)}; model "
                  f"{options.model_name}", file=sys.stderr, flush=True)
            try:
                serve.run(deployment.bind(replica_options, board_name), name=APP, route_prefix="/")
            except RuntimeError as exc:
                raise ClusterError(f"the deployment failed: {_last_line(exc)}") from None
            print(f"densepure serve: http://{options.host}:{options.port} ready on Ray Serve after "
                  f"{time.monotonic() - started:.0f} s ({_describe(settings)})", file=sys.stderr, flush=True)
            stop.wait()
            print("densepure serve: stopping: the replicas drain", file=sys.stderr, flush=True)
        finally:
            _shutdown(ray, serve, board, address == LOCAL)
    return 0


def _stop_event() -> threading.Event:
    stop = threading.Event()

    def handle(sig, frame):
        if stop.is_set() and sig == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)
    return stop


def _shutdown(ray: Any, serve: Any, board: Any, local: bool) -> None:
    try:
        serve.delete(APP)  # graceful: each replica drains its requests, then its jobs
    except Exception as exc:  # noqa: BLE001  (Serve never started, or is gone: nothing to drain)
        log.warning("deleting the Serve application: %s", _last_line(exc))
    if local:
        try:
            serve.shutdown()
        except Exception as exc:  # noqa: BLE001
            log.warning("stopping Serve: %s", _last_line(exc))
    try:
        ray.kill(board)
    except Exception:  # noqa: BLE001  (already gone with its node)
        pass


def _describe(settings: dict) -> str:
    actor = settings["ray_actor_options"]
    each = f"{actor['num_gpus']:g} GPU" if actor["num_gpus"] else f"{actor['num_cpus']:g} CPU"
    scaling = settings.get("autoscaling_config")
    if scaling:
        return (f"{scaling['initial_replicas']} replica(s), autoscaling {scaling['min_replicas']}.."
                f"{scaling['max_replicas']} at {scaling['target_ongoing_requests']:g} requests each, {each} each")
    return f"{settings['num_replicas']} replica(s), {each} each"


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
