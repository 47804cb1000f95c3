"""``densepure serve``: the server's own flags (listening, limits, seeds) beside certify's model, smoothing and
execution groups (:mod:`densepure.cli.arguments`); one builder makes :class:`ServeOptions` of them all."""

from __future__ import annotations

import argparse

from densepure.certify.options import SamplingOptions
from densepure.cli.arguments import (
    add_execution_arguments,
    add_model_arguments,
    add_smoothing_arguments,
    default,
    options_from_args,
)
from densepure.serve.settings import Placement, ReplicaOptions, ServeOptions, ServerLimits

_DEFAULT = ServerLimits()


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="a certified-prediction server (Open Inference Protocol v2, needs the serve extra)",
                       description="Serve certified predictions over HTTP (KServe v2 / Triton protocol). With no "
                                   "options: the shipped digits preset on 127.0.0.1:8000.",
                       argument_default=argparse.SUPPRESS)
    add_model_arguments(p)
    add_smoothing_arguments(p)
    add_serve_arguments(p)
    add_execution_arguments(p)
    p.set_defaults(_func=run, _build=ServeOptions.build)


def run(args: argparse.Namespace) -> int:
    from densepure.serve import require_extra

    require_extra()  # one line saying how to install it, before anything loads
    options = options_from_args(args)
    if options.cluster.ray is not None:
        from densepure.serve.ray_serve import run_ray_server

        return run_ray_server(options)
    from densepure.serve.server import run_server

    return run_server(options)


def _device_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected devices like cuda:0,cuda:1 or all, got {text!r}")
    return names


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("statistics (request defaults; a request may lower alpha and choose n0, n up to the caps)")
    g.add_argument("--n0", type=int, help="default selection draws (default: 100; digits: 50)")
    g.add_argument("--n", type=int, help="default estimation draws, and the sequential test's largest n "
                                         "(default: 100000; digits: 1000)")
    g.add_argument("--alpha", type=float, help="failure probability, the largest a request may ask for "
                                               f"(default: {default(SamplingOptions, 'alpha')})")
    g.add_argument("--num-classes", type=int, help="classes, when the classifier does not say")
    g = p.add_argument_group("server")
    g.add_argument("--host", help=f"address to listen on (default: {default(ServeOptions, 'host')})")
    g.add_argument("--port", type=int, help=f"port (default: {default(ServeOptions, 'port')})")
    g.add_argument("--allow-client-seed", action="store_true",
                   help="accept a request's seed and noise_id (reproducibility audits only: a known seed lets an "
                        "attacker search for a perturbation the fixed noise misses); off: every request's seed is "
                        "drawn from the OS CSPRNG and never returned")
    g.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help=f"(default: {default(ServeOptions, 'log_level')})")
    g.add_argument("--access-log", action=argparse.BooleanOptionalAction,
                   help="one JSON line per request on stderr (default: on)")
    g = p.add_argument_group("limits")
    for flag, value, text in (
            ("--max-body-bytes", _DEFAULT.max_body_bytes, "request body size (413 above)"),
            ("--max-batch", _DEFAULT.max_batch, "images per request"),
            ("--max-n0", _DEFAULT.max_n0, "selection draws a request may ask for"),
            ("--max-n", _DEFAULT.max_n, "estimation draws (or the sequential test's largest n) a request may ask for"),
            ("--max-queue", _DEFAULT.max_queue, "requests waiting for engine slots (503 with Retry-After above)"),
            ("--max-queued-draws", _DEFAULT.max_queued_draws,
             "worst-case draws of all accepted, undecided requests (503 with Retry-After above)"),
            ("--image-slots", _DEFAULT.image_slots, "images in the engine at once; 1 runs one image at a time"),
            ("--max-jobs", _DEFAULT.max_jobs, "jobs retained (running, or finished and not yet fetched)"),
            ("--max-connections", _DEFAULT.max_connections,
             "open HTTP connections (past it: 503 with Retry-After, and the connection is closed)")):
        g.add_argument(flag, type=int, help=f"{text} (default: {value})")
    g.add_argument("--job-ttl", dest="job_ttl_s", type=float,
                   help=f"seconds a finished job's result is kept unfetched (default: {_DEFAULT.job_ttl_s:g})")
    g.add_argument("--read-timeout", dest="read_timeout_s", type=float,
                   help="seconds a request's headers and body may take to arrive, from its first byte (past it: 408, "
                        f"connection closed) (default: {_DEFAULT.read_timeout_s:g})")
    g.add_argument("--keep-alive-timeout", dest="keep_alive_s", type=float,
                   help=f"seconds an idle keep-alive connection stays open (default: {_DEFAULT.keep_alive_s:g})")
    g.add_argument("--grace-period", dest="grace_s", type=float,
                   help=f"SIGTERM: seconds to finish the requests in flight (default: {_DEFAULT.grace_s:g})")
    add_scale_arguments(p)


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """Past one device: every device of this machine (``--devices``), or replicas on Ray Serve (``--ray``)."""
    g = p.add_argument_group("devices (one engine loop per device behind this server's endpoint)")
    g.add_argument("--devices", type=_device_list, metavar="DEV,DEV,...|all",
                   help="serve on each of these devices (cpu, cuda, cuda:N; a device may repeat) or on every CUDA "
                        "device (all): the models load once per device, each request runs on the device with the "
                        "fewest queued draws (default: the one --device)")
    g.add_argument("--device-threads", type=int,
                   help="torch threads per CPU engine loop (default: the cores shared equally among several CPU "
                        "loops)")
    g.add_argument("--pin-cores", action="store_true",
                   help="run each CPU engine loop on cores of its own (a machine of its own; on a shared one a "
                        "pinned loop cannot leave a busy core)")
    g.add_argument("--split-min-draws", type=int,
                   help="split a request's draws across the devices when each of its images may take at least this "
                        "many draws and splitting is expected to answer it sooner (exact: the same counts); 0 never "
                        f"splits (default: {default(Placement, 'split_min_draws')})")
    g = p.add_argument_group("Ray Serve (replicas of this server across a Ray cluster; needs ray[serve])")
    g.add_argument("--ray", metavar="local|auto|ADDRESS",
                   help="deploy the server on Ray Serve behind Serve's HTTP proxy (--host, --port): local (start Ray "
                        "on this machine), auto (join the running cluster) or its address; one replica per GPU")
    g.add_argument("--replicas", type=int,
                   help="replicas to start (default: one per GPU of the cluster; one without GPUs)")
    g.add_argument("--min-replicas", type=int, help="autoscale on queued requests, down to this many replicas")
    g.add_argument("--max-replicas", type=int, help="autoscale on queued requests, up to this many replicas")
    g.add_argument("--target-requests", type=float,
                   help="autoscaling: requests in flight or queued per replica that Serve aims at "
                        f"(default: {default(ReplicaOptions, 'target_requests'):g})")
    g.add_argument("--downscale-delay", dest="downscale_delay_s", type=float,
                   help="autoscaling: seconds below target before a replica is removed (it drains first) "
                        f"(default: {default(ReplicaOptions, 'downscale_delay_s'):g})")
