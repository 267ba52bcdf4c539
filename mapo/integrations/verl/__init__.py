"""MAPO on verl: our estimators in verl's registry, our agent loop, our reward function.

Import this package to register the ``mapo`` family of advantage estimators in
verl's ``ADV_ESTIMATOR_REGISTRY`` (``mapo``, ``mapo_gated``, ``mapo_reward_mix``,
``mapo_grpo``). The agent loop (:mod:`.agent_loop`) and the reward function
(:mod:`.reward`) are loaded by verl itself from the example config; the launcher
:mod:`.main` wires everything together. See ``docs/scale_out.md``.

verl is an optional extra: ``pip install -c constraints.txt -e '.[verl]'`` then
``pip install -c constraints.txt --no-deps verl==0.9.1`` (verl declares an older
transformers than the one mapo pins; ``--no-deps`` keeps ours).
"""

from __future__ import annotations

VERL_INSTALL_HINT = (
    "install the verl extra: pip install -c constraints.txt -e '.[verl]' && "
    "pip install -c constraints.txt --no-deps verl==0.9.1"
)


def require_verl() -> None:
    """Raise ImportError with the install command when verl (or a module it needs) is missing."""
    try:
        import verl.trainer.ppo.core_algos  # noqa: F401
    except ImportError as err:
        raise ImportError(f"mapo.integrations.verl needs verl 0.9.1 ({err}); {VERL_INSTALL_HINT}") from err


require_verl()

from mapo.integrations.verl.estimator import (  # noqa: E402
    VERL_ESTIMATORS,
    install_non_tensor_passthrough,
    register_estimators,
)

register_estimators()

__all__ = ["VERL_ESTIMATORS", "VERL_INSTALL_HINT", "install_non_tensor_passthrough", "register_estimators", "require_verl"]
