"""``densepure bench``: the benchmarks a user runs on their own machine, with one report format.

* :mod:`.throughput` - images/hour, draws/s, rows per call, MFU; against the official loop (:mod:`.official`);
* :mod:`.latency` - one image at a time: latency percentiles, draws per image;
* :mod:`.serve` - an Open Inference Protocol v2 server under load (:mod:`.oip`, a minimal client);
* :mod:`.loadgen`, :mod:`.local`, :mod:`.worker` - MLPerf LoadGen's scenarios (single-stream, server, offline);
* :mod:`.model_rates` - each model alone at the engine's rows: rows/s with and without CUDA graphs, FLOPs, MFU;
* :mod:`.sequential`, :mod:`.kernels` (:mod:`.kernel_inputs`), :mod:`.scaling` - the sequential tests, the fused
  kernels (each checked against its torch reference before it is timed), Ray scaling;
* :mod:`.sweep` - closed-loop clients at concurrency levels (``serve``, ``latency --concurrency``);
* :mod:`.report` (the versioned JSON schema), :mod:`.render` (markdown, plots, compare), :mod:`.output`
  (the report directory), :mod:`.environment`, :mod:`.options`, :mod:`.models`, :mod:`.session`.

Every measuring subcommand takes the job flags of ``densepure certify`` (:class:`~.options.BenchRun`), so it
measures what certify runs; ``scripts/gpu_check.sh`` runs these subcommands for its measuring stages.
Timings are measured here and never asserted in tests.
"""
