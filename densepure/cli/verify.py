"""``densepure verify FILE...``: the check a reviewer runs on someone else's result files.

One verdict line per file (``ok``, ``FAILED`` with the first problem, or ``unchecked``: a TSV without a
sidecar, Cohen's format, of which only the format can be checked), then any further problems, indented. Exit status: 0 when no problem
was found, 1 when a file failed, 2 for a path that cannot be read at all (a user error, as everywhere).
The checks are :mod:`densepure.results.verify`'s.
"""

from __future__ import annotations

import argparse

EXIT_FAILED = 1
SHOWN = 20  # problems listed per file; the verdict line counts them all


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="recompute every certificate of result files from their counts, check the "
                                      "sidecar's hash chain and the TSV against it; one verdict per file",
                       description="Check result files without trusting them: every certificate is recomputed from "
                                   "its recorded counts (Cohen's bound with the recorded alpha, n and sigma; "
                                   "PREDICT's binomial test; the sequential plan), the sidecar's hash chain is "
                                   "followed, each TSV row is compared with its record, and the recorded "
                                   "configuration is checked. Exit status 1 if any file fails. A forger who "
                                   "rewrites the chain is not detected (docs/results.md).")
    p.add_argument("files", nargs="+", metavar="FILE", help="result files (TSV; or a sidecar .jsonl)")
    p.add_argument("--require-sidecar", action="store_true",
                   help="a TSV without a sidecar (nothing beyond its format can be checked) fails instead of "
                        "being reported as unchecked")
    p.set_defaults(_func=verify)


def verify(args: argparse.Namespace) -> int:
    from densepure.paths import check_input
    from densepure.results.verify import Status, verify_file

    for path in args.files:  # every path usable before any verdict: a typo is one line, exit 2
        check_input(path, "result file")
    failed = False
    for path in args.files:
        verdict = verify_file(path, require_sidecar=args.require_sidecar)
        print(verdict.line())
        further = verdict.problems[1:]  # the first is on the verdict line
        for problem in further[:SHOWN]:
            print(f"    {problem}")
        if len(further) > SHOWN:
            print(f"    ... and {len(further) - SHOWN} more")
        failed |= verdict.status is Status.FAILED
    return EXIT_FAILED if failed else 0
