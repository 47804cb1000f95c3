"""``densepure bench``: the benchmarks a user runs on their own machine, with one report format.

* :mod:`.throughput` - images/hour, draws/s, rows per call, MFU; against the official loop (:mod:`.official`);
* :mod:`.latency` - one image at a time: latency percentiles, draws per image;
* :mod:`.serve` - an Open Inference Protocol v2 server under load (:mod:`.oip`, a minimal client);
* :mod:`.loadgen`, :mod:`.local`, :mod:`.worker` - MLPerf LoadGen's scenarios (single-stream, server, offline);
* :mod:`.sequential`, :mod:`.kernels`, :mod:`.scaling` - the sequential tests, the fused kernels, Ray scaling;
* :mod:`.report` (the versioned JSON schema), :mod:`.render` (markdown, plots, compare), :mod:`.output`
  (the report directory), :mod:`.environment`, :mod:`.options`, :mod:`.models`, :mod:`.session`.

Every measuring subcommand takes the job flags of ``densepure certify`` (:class:`~.options.BenchRun`), so it
measures what certify runs. Timings are measured here and never asserted in tests.
"""
