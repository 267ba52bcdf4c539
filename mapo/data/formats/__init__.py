"""One reader per benchmark format (:mod:`mapo.data.benchmarks` picks one); shared plumbing in :mod:`.common`."""
