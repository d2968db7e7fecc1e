"""A2C (on-policy, any action space)."""

from . import Algorithm, register
from ._sb3 import ANY_ACTION, ON_POLICY, RL_SPACE

A2C = register(
    Algorithm(
        name="a2c",
        sb3_class="stable_baselines3:A2C",
        off_policy=False,
        action_spaces=ANY_ACTION,
        default_space={
            **RL_SPACE,
            "ent_coef": "loguniform:1e-6:1e-2",
            "gae_lambda": "uniform:0.8:1.0",
            "vf_coef": "uniform:0.25:1.0",
            "max_grad_norm": "uniform:0.3:2.0",
        },
        appliers=dict(ON_POLICY),
        activation="tanh",
    )
)
