"""Certification jobs on the engine: what each image gets and how a run is put together.

* :mod:`~densepure.certify.options` - the job's options, composed of records that validate themselves;
* :mod:`~densepure.certify.tasks` - PREDICT, CERTIFY and sequential certification: each task owns an
  image's lifecycle (its engine policy, :mod:`~densepure.certify.policies`, and its records);
* :mod:`~densepure.certify.loading` - the models and the engine of a job (shared with the server and
  cluster workers); :mod:`~densepure.certify.runner` - a dataset through the engine into result files;
  :mod:`~densepure.certify.job` - checks, content hashes, resume, the run;
* :mod:`~densepure.certify.procedures` - the plain per-image procedures the engine is tested against.

The statistics are in :mod:`densepure.stats` and the result files in :mod:`densepure.results`.
"""
