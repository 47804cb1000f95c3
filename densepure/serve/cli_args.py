"""The ``densepure serve`` flags that are the server's own (listening, limits, seeds); the model,
smoothing and execution flags are certify's (:mod:`densepure.cli_certify`), added by :mod:`densepure.cli`."""

from __future__ import annotations

import argparse

from densepure.serve.settings import ServeOptions, ServerLimits

_DEFAULT = ServerLimits()


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("statistics (request defaults; a request may lower alpha and choose n0, n up to the caps)")
    g.add_argument("--n0", type=int, help="default selection draws (default: 100; digits: 50)")
    g.add_argument("--n", type=int, help="default estimation draws, and the sequential test's largest n "
                                         "(default: 100000; digits: 1000)")
    g.add_argument("--alpha", type=float, default=0.001, help="failure probability, the largest a request may ask "
                                                             "for (default: 0.001)")
    g.add_argument("--num-classes", type=int, help="classes, when the classifier does not say")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    g.add_argument("--allow-client-seed", action="store_true",
                   help="accept a request's seed and noise_id (reproducibility audits only: a known seed lets an "
                        "attacker search for a perturbation the fixed noise misses); off: every request's seed is "
                        "drawn from the OS CSPRNG and never returned")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    g.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
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
        g.add_argument(flag, type=int, default=value, help=f"{text} (default: {value})")
    g.add_argument("--job-ttl", type=float, default=_DEFAULT.job_ttl_s,
                   help=f"seconds a finished job's result is kept unfetched (default: {_DEFAULT.job_ttl_s:g})")
    g.add_argument("--grace-period", type=float, default=_DEFAULT.grace_s,
                   help=f"SIGTERM: seconds to finish the requests in flight (default: {_DEFAULT.grace_s:g})")


def serve_options_from_args(args: argparse.Namespace) -> ServeOptions:
    """The server's options from the parsed flags (models, smoothing and execution as certify's)."""
    from densepure.certify.job import JobOptions
    from densepure.diffusion import Mode, NoiseKind, TStarRule
    from densepure.engine.backends.select import BackendKind
    from densepure.precision import Precision

    job = JobOptions(preset=args.preset, checkpoint=args.checkpoint, classifier=args.classifier, mode=Mode(args.mode),
                     sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, num_chains=args.num_chains,
                     steps=args.steps, t_star_rule=TStarRule(args.t_star_rule), batch_size=args.batch_size,
                     device=args.device, precision=Precision(args.precision), backend=BackendKind(args.backend),
                     artifacts=args.artifacts, cache_dir=args.cache_dir, cuda_graphs=args.cuda_graphs,
                     lookahead=args.lookahead, noise=NoiseKind(args.noise) if args.noise else None,
                     levels=args.levels)
    limits = ServerLimits(max_body_bytes=args.max_body_bytes, max_batch=args.max_batch, max_n0=args.max_n0,
                          max_n=args.max_n, max_queue=args.max_queue, max_queued_draws=args.max_queued_draws,
                          image_slots=args.image_slots, max_jobs=args.max_jobs, job_ttl_s=args.job_ttl,
                          grace_s=args.grace_period, allow_client_seed=args.allow_client_seed)
    return ServeOptions(job=job, limits=limits, host=args.host, port=args.port, num_classes=args.num_classes,
                        access_log=args.access_log, log_level=args.log_level)
