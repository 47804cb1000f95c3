"""Result files (no torch, no engine): Cohen's TSV beside a JSONL sidecar with the configuration and counts.

* :mod:`~densepure.results.records` - one image's record, the run header, the TSV formats.
* :mod:`~densepure.results.files` - reading TSVs and sidecars back.
* :mod:`~densepure.results.chain` - the sidecar's hash chain (format version 2).
* :mod:`~densepure.results.verify` - every certificate recomputed from its counts, the chain, TSV against sidecar.
* :mod:`~densepure.results.writer` - the locked writer; :mod:`~densepure.results.resume` - resuming a run.
* :mod:`~densepure.results.analyze` - certified accuracy, ACR, tables and plots.
"""
