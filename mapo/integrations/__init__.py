"""Adapters that run mapo's algorithm inside other training engines.

Each integration is an optional extra; nothing else in mapo imports them.

- :mod:`mapo.integrations.verl`: MAPO on verl (multi-GPU, multi-node).
"""
