"""Result files (no torch, no engine): Cohen's TSV beside a JSONL sidecar with the configuration and counts.

* :mod:`~densepure.results.records` - one image's record, the run header, the TSV formats.
* :mod:`~densepure.results.files` - reading TSVs and sidecars back.
* :mod:`~densepure.results.writer` - the locked, resumable writer.
* :mod:`~densepure.results.analyze` - certified accuracy, ACR, tables and plots.
"""
