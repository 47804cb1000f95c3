"""The statistics of certification, on counts alone (no torch, no engine).

* :mod:`~densepure.stats.cohen` - Cohen et al. (ICML 2019): the Clopper-Pearson bound, CERTIFY's radius,
  PREDICT's binomial test, and the validators of alpha and sample counts.
* :mod:`~densepure.stats.sequential` - sequential certification of a requested radius: plans fixed before
  sampling, the state machine that reads counts at each look.
* :mod:`~densepure.stats.boundary` - the default exact-boundary plan (its wrong-certification probability
  computed by :mod:`~densepure.stats.binomial_dp`) and the betting plan.
* :mod:`~densepure.stats.confseq` - betting confidence sequences and the anytime-valid radius.
"""
