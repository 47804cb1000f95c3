"""One engine loop against two behind the same endpoint (`densepure serve --devices`), on CPU here: a thin entry
point over `benchmarks/serve.py` (which starts each server and measures it with `densepure bench serve`).

``one`` (``--devices cpu --device-threads 1 --pin-cores``: one engine loop, one torch thread, on core 0)
against ``two`` (``--devices cpu,cpu --device-threads 1 --pin-cores``: two engine loops, one torch thread
each, each on a core of its own), and the same two unpinned (``one-free``, ``two-free``: the OS places
the threads); single-image certify_radius requests at the server's sigma; requests split across devices
whenever that helps (``--split-min-draws 0``). Reported per level: requests/s, p50/p95, draws/s and UNet
rows per call (the server's metrics, summed over its devices); then two / one for each pair. On a GPU
machine, ``--configs`` names device lists instead (``cuda:0 cuda:0,cuda:1``: each is ``--devices LIST``).

Usage: python benchmarks/serve_devices.py [--configs one two one-free two-free] [--concurrency 1 4 16]
       [--requests 4 8 32] [--server-args "--K 3"] [--out DIR]
The last line printed is a JSON object: every configuration's metrics and the two / one ratios.
"""

from __future__ import annotations

import serve

if __name__ == "__main__":
    serve.main(["one", "two", "one-free", "two-free"], ("--split-min-draws", "0"),
               pairs=(("one", "two"), ("one-free", "two-free")))
