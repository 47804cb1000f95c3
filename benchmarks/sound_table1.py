"""Table 1's rows under the sound noise beside the float noise, on the same digits images and seed.

Reads the result files of ``benchmarks/table1.py`` (float: ``results/table1``) and of
``benchmarks/table1.py --noise sound`` (``results/table1_sound``), keeps the images both have
certified (the sound run may be partial: it is compared on what it has), and writes
``results/sound_vs_float_digits.md``: certified accuracy at each radius and ACR of both noises on those
images, the sound noise's ACR minus the float noise's paired per image (95% interval), and on how many
images the predicted label or the abstention differs. The two noises draw different samples (grid steps
against float normals), so per-image radii differ by sampling noise; the paired difference says whether
the smoothed classifiers differ beyond it.

Usage: python benchmarks/sound_table1.py [--sigma 0.25]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import machine

from densepure.results.analyze import DEFAULT_RADII, Run, load_run, markdown_table, paired_markdown, summarize

HERE = Path(__file__).resolve().parent
ROWS = {"onestep": "onestep", "densepure_K10_b2": "densepure K=10 b=2", "densepure_K3_b2": "densepure K=3 b=2",
        "densepure_K1_b2": "densepure K=1 b=2"}


def _pair(sigma: float, tag: str, name: str) -> tuple[Run, Run] | None:
    paths = [HERE / "results" / folder / f"sigma{sigma:g}_{tag}.tsv" for folder in ("table1", "table1_sound")]
    if not all(p.exists() for p in paths):
        return None
    runs = [load_run(p) for p in paths]
    shared = {r.idx for r in runs[0].rows} & {r.idx for r in runs[1].rows}
    if not shared:
        return None
    return tuple(Run(f"{name}, {noise}", sorted((r for r in run.rows if r.idx in shared), key=lambda r: r.idx))
                 for run, noise in zip(runs, ("float", "sound"), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sigma", type=float, default=0.25)
    args = ap.parse_args()
    lines = ["# Table 1 on digits: the sound noise beside the float noise", "",
             f"Command: `python benchmarks/sound_table1.py --sigma {args.sigma:g}` (from the files of "
             "`python benchmarks/table1.py --threads 2` and `python benchmarks/table1.py --noise sound --threads 1 "
             f"--sigmas {args.sigma:g} --only ...`)  ",
             f"Machine of this report: {machine()} (the certificates do not depend on it)  ",
             "Setting: the digits test images of Table 1 (N0=100, N=10,000, alpha=0.001, seed=0), the shipped models; "
             "sound: exact grid steps on the digits' grid k/16 (docs/guarantees.md). Each row is compared on the "
             "images both noises have certified.", ""]
    for tag, name in ROWS.items():
        pair = _pair(args.sigma, tag, name)
        if pair is None:
            continue
        float_run, sound_run = pair
        differ = sum(a.predict != b.predict for a, b in zip(float_run.rows, sound_run.rows, strict=True))
        lines += [f"## {name}, sigma = {args.sigma:g} ({len(float_run.rows)} images)", "",
                  markdown_table([summarize(run, DEFAULT_RADII) for run in pair]),
                  paired_markdown(float_run, [sound_run]),
                  f"Predicted label (or abstention) differs on {differ} of {len(float_run.rows)} images.", ""]
    out = HERE / "results" / "sound_vs_float_digits.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"report: {out}")


if __name__ == "__main__":
    main()
