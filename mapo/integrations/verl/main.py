"""Launch verl PPO with the mapo plugin: ``python -m mapo.integrations.verl.main [hydra overrides]``.

The same as verl's ``python -m verl.trainer.main_ppo`` (its config, its overrides),
except that

- mapo-specific launch mistakes stop here, before Ray starts, with what to change
  (:func:`check_launch_config`);
- the trainer process (verl's TaskRunner) imports :mod:`mapo.integrations.verl`
  (registering the estimators) and installs the ``non_tensor_batch`` passthrough
  (:func:`~.estimator.install_non_tensor_passthrough`) before training, which is
  verl's documented way for a recipe to change the TaskRunner (``run_ppo(config,
  task_runner_class)``).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from mapo.integrations.verl import VERL_ESTIMATORS, require_verl
from mapo.integrations.verl.estimator import advantage_config, needs_semantic

AGENT_NAME = "mapo_zoom_agent"


def check_launch_config(config: Any) -> list[str]:
    """Problems with a verl config for a mapo run, each saying what to change (empty when fine)."""
    problems = []
    name = str(config.algorithm.adv_estimator)
    if name not in VERL_ESTIMATORS:
        return problems  # not a mapo estimator: verl's own checks apply
    if config.trainer.get("use_v1", False):
        problems.append(
            f"algorithm.adv_estimator={name} needs the legacy trainer: set trainer.use_v1=false (verl 0.9.1's v1 "
            "trainer passes no per-sample data to advantage estimators)"
        )
    try:
        advantage_config(name, config.algorithm)
    except ValueError as err:
        problems.append(str(err))
    rollout = config.actor_rollout_ref.rollout
    if needs_semantic(name):
        agent = rollout.get("agent", {}) or {}
        if agent.get("default_agent_loop") != AGENT_NAME:
            problems.append(
                f"algorithm.adv_estimator={name} needs semantic scores from the mapo agent loop: set "
                f"actor_rollout_ref.rollout.agent.default_agent_loop={AGENT_NAME} and "
                "actor_rollout_ref.rollout.agent.agent_loop_config_path=examples/verl/agent_loop.yaml"
            )
        elif not agent.get("agent_loop_config_path"):
            problems.append(
                "set actor_rollout_ref.rollout.agent.agent_loop_config_path (e.g. examples/verl/agent_loop.yaml): "
                f"it registers {AGENT_NAME} and gives it verifier_path"
            )
        elif os.path.exists(str(agent.agent_loop_config_path)):
            problems.extend(_check_agent_loop_file(str(agent.agent_loop_config_path)))
    if int(rollout.get("n", 1)) < 2:
        problems.append(f"actor_rollout_ref.rollout.n={rollout.get('n', 1)}: group-normalised advantages need n >= 2")
    return problems


def _check_agent_loop_file(path: str) -> list[str]:
    from omegaconf import OmegaConf

    entries = [e for e in OmegaConf.load(path) if e.get("name") == AGENT_NAME]
    if not entries:
        return [f"{path} has no entry named {AGENT_NAME}"]
    verifier = entries[0].get("verifier_path")
    if verifier is None:
        return [f"{path}: {AGENT_NAME} has no verifier_path; set it to a local CLIP directory"]
    if not os.path.isdir(str(verifier)):
        return [f"{path}: verifier_path={verifier} is not a directory (a local CLIP checkpoint; nothing is downloaded)"]
    return []


def _task_runner_class():
    """verl's legacy TaskRunner, importing mapo in the trainer process first."""
    import ray
    from verl.trainer.main_ppo_v0 import TaskRunner

    base = TaskRunner.__ray_metadata__.modified_class

    class MapoTaskRunner(base):
        def run(self, config):
            importlib.import_module("mapo.integrations.verl")  # its import registers the estimators in this process
            from mapo.integrations.verl.estimator import install_non_tensor_passthrough

            install_non_tensor_passthrough()
            return super().run(config)

    return ray.remote(num_cpus=1)(MapoTaskRunner)


def main() -> None:
    require_verl()
    import hydra
    from verl.trainer.main_ppo import run_ppo
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    config_dir = os.path.join(os.path.dirname(sys.modules["verl.trainer.main_ppo"].__file__), "config")

    @hydra.main(config_path=config_dir, config_name="ppo_trainer", version_base=None)
    def _run(config):
        problems = check_launch_config(config)
        if problems:
            raise SystemExit("mapo: cannot launch:\n  - " + "\n  - ".join(problems))
        auto_set_device(config)
        validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
        run_ppo(config, task_runner_class=_task_runner_class())

    _run()


if __name__ == "__main__":
    main()
