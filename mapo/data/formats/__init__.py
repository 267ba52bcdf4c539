"""One reader per benchmark format (:mod:`mapo.data.readers` picks one); shared plumbing in :mod:`.common`."""
