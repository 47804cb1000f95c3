"""The sound noise against the float noise, on the CPU: the sampler per value, and certification end to end.

1. Sampler (torch, the engine's CPU path): nanoseconds per value of the noise field alone, the float
   normals (:func:`densepure.noise.gaussian_words`) against the sound grid steps
   (:func:`densepure.noise.sound_steps_words`), and of the whole start row (noise + start arithmetic,
   :func:`densepure.kernels.rows.start_rows`), for rows of the digits, CIFAR-10 and ImageNet sizes at
   sigma = 0.25 (tables of 90, 1442 and 1442 thresholds). The two are timed alternately, ``--repeats``
   times each, in the thread's CPU time (on a shared machine the wall clock also counts the other jobs);
   the best of each is reported, and the ratio sound / float.
2. End to end: ``densepure certify``'s main job on the digits (its defaults: DensePure K=10, b=2, sigma
   0.25, n0=50, n=1000, 20 images) with ``--noise float`` and ``--noise sound``, alternately
   ``--e2e-repeats`` times each (models loaded once per run, as the command does); the best wall time and
   the best CPU time of the process for each, their ratios, and the UNet and classifier rows each ran:
   the two noises draw different samples, so the vote's early exit runs a different number of chains.

Usage: python benchmarks/sound.py [--repeats 15] [--e2e-repeats 2] [--e2e-images 20]
The last line printed is a JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import machine

from densepure.diffusion import StartKind
from densepure.kernels import StartRule, resolve_kernels
from densepure.noise import NoiseKeys, gaussian_words, row_words, sound_steps_words, sound_table

SIZES = {"digits": ((1, 8, 8), 16, 4096), "cifar10": ((3, 32, 32), 255, 128), "imagenet": ((3, 256, 256), 255, 2)}
SIGMA = 0.25


def _best(fns: dict, repeats: int, clock=time.thread_time) -> dict[str, float]:
    """Alternate the callables ``repeats`` times; the best seconds of each on ``clock`` (the thread's CPU
    time by default: on a shared machine, the time other jobs take the core away is not the sampler's)."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            best[name] = min(best[name], clock() - start)
    return best


def _calls(kernels, words, shape, table, images, levels, slots, float_rule, sound_rule) -> dict:
    """The four timed calls of one size: the float and sound noise alone, and the start rows of each."""
    cpu = torch.device("cpu")
    return {"float_noise": lambda: gaussian_words(words, shape, cpu),
            "sound_noise": lambda: sound_steps_words(words, shape, table, cpu),
            "float_start": lambda: kernels.start_rows(images / levels, slots, words, float_rule),
            "sound_start": lambda: kernels.start_rows(images, slots, words, sound_rule)}


def sampler(repeats: int) -> dict:
    torch_kernels = resolve_kernels("torch", "cpu")
    out = {}
    for name, (shape, levels, rows) in SIZES.items():
        keys = NoiseKeys.from_arrays(7, image=3, phase=1, draw=torch.arange(rows), chain=0, step=0, stream=0)
        words = row_words(keys, "cpu")
        table = sound_table(levels, SIGMA)
        images = torch.randint(0, levels + 1, (1, *shape)).to(torch.float32)
        float_rule = StartRule(StartKind.DENSEPURE, sigma=SIGMA)
        sound_rule = StartRule(StartKind.DENSEPURE, sigma=SIGMA, table=table)
        slots = torch.zeros(rows, dtype=torch.int64)
        fns = _calls(torch_kernels, words, shape, table, images, levels, slots, float_rule, sound_rule)
        best = _best(fns, repeats)
        values = rows * images[0].numel()
        ns = {k: v / values * 1e9 for k, v in best.items()}
        out[name] = {"rows": rows, "values_per_row": images[0].numel(), "thresholds": len(table.thresholds),
                     "ns_per_value": ns, "noise_ratio": ns["sound_noise"] / ns["float_noise"],
                     "start_ratio": ns["sound_start"] / ns["float_start"]}
    return out


def end_to_end(repeats: int, images: int) -> dict:
    from densepure.certify.job import JobOptions, prepare, run

    wall = {"float": float("inf"), "sound": float("inf")}
    cpu, rows = dict(wall), {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for noise in ("float", "sound"):
                options = JobOptions.build(noise=noise, seed=1, max=images, device="cpu", overwrite=True,
                                           output=str(Path(tmp) / f"{noise}{rep}.tsv"))
                start, start_cpu = time.perf_counter(), time.process_time()
                job = prepare(options)
                run(job)
                wall[noise] = min(wall[noise], time.perf_counter() - start)
                cpu[noise] = min(cpu[noise], time.process_time() - start_cpu)
                rows[noise] = {"unet_rows": job.engine.stats.unet_rows, "classifier_rows": job.engine.stats.classifier_rows}
    return {"wall_s": wall, "cpu_s": cpu, "wall_ratio": wall["sound"] / wall["float"],
            "cpu_ratio": cpu["sound"] / cpu["float"], "images": images, "model_rows": rows,
            "cpu_s_per_unet_row": {k: cpu[k] / rows[k]["unet_rows"] for k in cpu}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--e2e-repeats", type=int, default=2)
    p.add_argument("--e2e-images", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"machine": machine(), "sampler": sampler(args.repeats)}
    for name, row in result["sampler"].items():
        ns = row["ns_per_value"]
        print(f"{name:9s} ({row['rows']} rows x {row['values_per_row']} values, {row['thresholds']} thresholds): "
              f"noise float {ns['float_noise']:.1f} ns, sound {ns['sound_noise']:.1f} ns per value "
              f"(sound/float {row['noise_ratio']:.2f}x); start row float {ns['float_start']:.1f} ns, "
              f"sound {ns['sound_start']:.1f} ns ({row['start_ratio']:.2f}x)", flush=True)
    if args.e2e_repeats:
        e2e = result["end_to_end"] = end_to_end(args.e2e_repeats, args.e2e_images)
        w, c = e2e["wall_s"], e2e["cpu_s"]
        print(f"densepure certify, digits main job ({e2e['images']} images): wall float {w['float']:.1f} s, sound "
              f"{w['sound']:.1f} s ({e2e['wall_ratio']:.3f}x); CPU float {c['float']:.1f} s, sound {c['sound']:.1f} s "
              f"({e2e['cpu_ratio']:.3f}x); UNet rows float {e2e['model_rows']['float']['unet_rows']:,}, sound "
              f"{e2e['model_rows']['sound']['unet_rows']:,} (the draws differ, and so does the vote's early exit)",
              flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
