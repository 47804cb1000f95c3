"""Certification on a Ray cluster: one run over every GPU of a cluster, exact and resumable.

The driver (:mod:`~densepure.distributed.driver`) fixes the seed, reads the images and writes the one result
file; workers (:mod:`~densepure.distributed.worker`, Ray actors from :mod:`~densepure.distributed.cluster`)
each load the models once and sample the chunks the work queue (:mod:`~densepure.distributed.work`) hands
out. Certificates equal a single process's: noise is keyed by (seed, image, draw), never by worker.
``ray`` is imported only when a run starts (the ``ray`` extra: ``pip install -e '.[ray]'`` in a clone).
"""

from densepure.distributed.cluster import ClusterError, connect, plan_workers
from densepure.distributed.driver import ClusterJob, RunObserver, prepare_cluster_job, run_cluster_job

__all__ = ["ClusterError", "ClusterJob", "RunObserver", "connect", "plan_workers", "prepare_cluster_job",
           "run_cluster_job"]
