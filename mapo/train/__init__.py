"""Training recipes (SFT warm start, RL) and the utilities they share (:mod:`mapo.train.common`)."""
