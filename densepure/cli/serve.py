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
from densepure.serve.settings import ServeOptions, ServerLimits

_DEFAULT = ServerLimits()


def add_parsers(sub) -> None:
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
    from densepure.serve.server import run_server

    return run_server(options_from_args(args))


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
            ("--max-jobs", _DEFAULT.max_jobs, "jobs retained (running, or finished and not yet fetched)")):
        g.add_argument(flag, type=int, help=f"{text} (default: {value})")
    g.add_argument("--job-ttl", dest="job_ttl_s", type=float,
                   help=f"seconds a finished job's result is kept unfetched (default: {_DEFAULT.job_ttl_s:g})")
    g.add_argument("--grace-period", dest="grace_s", type=float,
                   help=f"SIGTERM: seconds to finish the requests in flight (default: {_DEFAULT.grace_s:g})")
