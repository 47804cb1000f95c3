"""The runtime: many seeded chains of many images scheduled together on one device.

* :mod:`~densepure.engine.engine` - :class:`Engine` (submit / step / collect / idle / cancel; ``run`` for
  a stream of images), the core a dataset job, the server loop and a cluster worker all drive;
* :mod:`~densepure.engine.scheduler` - the tensor-free scheduler that decides what each batch holds;
  :mod:`~densepure.engine.policy` - what an image still needs (fixed counts or a sequential test);
* :mod:`~densepure.engine.executor` - runs the batches through the kernels and the backends;
  :mod:`~densepure.engine.vote` - the K-chain majority vote; :mod:`~densepure.engine.transfer` and
  :mod:`~densepure.engine.memory` - host copies and memory fitting; :mod:`~densepure.engine.device`;
* :mod:`~densepure.engine.backends` - torch, onnxruntime and TensorRT behind the one model seam
  (``eps_and_var`` / ``logits``, :mod:`~densepure.engine.backends.base`);
* :mod:`~densepure.engine.reference` - the plain path the engine is tested against, count for count.

The noise itself is :mod:`densepure.noise`; the per-row kernels are :mod:`densepure.kernels`.
"""
