"""Tiny models every test module may share.

- ``policy``: a fresh ``tiny`` Qwen2.5-VL (seed 0) per module, so a module may change it. Its processor's
  pixel budgets are the module's ``TOOL`` (a ``ToolConfig``) where the module defines one, else the default.
- ``tiny_policy_dir`` / ``tiny_verifier_dir``: one saved tiny policy and tiny CLIP for the whole session
  (:mod:`tiny_assets`); read-only, a test that alters them copies them first.
- File hashes are cached in a folder of the session (``MAPO_CACHE_DIR``).
- ``tiny_clip``: :func:`tiny_assets.save_tiny_clip`, for modules that need a CLIP of their own size.
"""

from __future__ import annotations

import pytest
import torch

import tiny_assets


@pytest.fixture(scope="session", autouse=True)
def _file_hash_cache(tmp_path_factory):
    """File hashes (mapo.core.fingerprint) are cached in a folder of the session, never in the user's ~/.cache."""
    import os

    os.environ["MAPO_CACHE_DIR"] = str(tmp_path_factory.mktemp("mapo-cache"))


@pytest.fixture(scope="module")
def policy(request):
    from mapo.policy import build_tiny_policy

    torch.set_num_threads(1)
    return build_tiny_policy("tiny", tool_config=getattr(request.module, "TOOL", None), seed=0)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_assets.make_policy_dir(tmp_path_factory.mktemp("assets") / "policy")


@pytest.fixture(scope="session")
def tiny_verifier_dir(tmp_path_factory):
    return tiny_assets.make_verifier_dir(tmp_path_factory.mktemp("assets") / "verifier")


@pytest.fixture(scope="session")
def tiny_clip():
    return tiny_assets.save_tiny_clip
