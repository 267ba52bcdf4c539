"""Layer 4, the algorithm: the maths over played trajectories.

Outcome reward (:mod:`~mapo.algo.reward`), semantic scores (:mod:`~mapo.algo.semantic`),
crop IoU and zoom hits (:mod:`~mapo.algo.crop_iou`), the registered advantage
estimators (:mod:`~mapo.algo.advantage`) and the policy loss (:mod:`~mapo.algo.loss`).
It does not import the engine: it reads trajectories, it does not play them.
"""
