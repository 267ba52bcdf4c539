"""Layer 0, the ground floor: what every other layer may use and that uses none of them.

Config dataclasses and their YAML/override grammar (:mod:`~mapo.core.config`,
:mod:`~mapo.core.config_files`), errors, fingerprints, progress lines, run
directories (lock, fingerprint, resume) and the shipped assets' names. No torch.
"""
