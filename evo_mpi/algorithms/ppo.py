"""PPO (on-policy, any action space)."""

from . import Algorithm, register
from ._sb3 import ANY_ACTION, ON_POLICY, RL_SPACE, set_attr, set_clip_range

PPO = register(
    Algorithm(
        name="ppo",
        sb3_class="stable_baselines3:PPO",
        off_policy=False,
        action_spaces=ANY_ACTION,
        default_space={
            **RL_SPACE,
            "ent_coef": "loguniform:1e-6:1e-2",
            "clip_range": "uniform:0.1:0.4",
            "gae_lambda": "uniform:0.8:1.0",
            "vf_coef": "uniform:0.25:1.0",
            "n_epochs": "int:3:20",
            "batch_size": "choice:64,128,256,512",
        },
        activation="tanh",
        schedulable=("learning_rate", "clip_range"),
        appliers={
            **ON_POLICY,
            "clip_range": set_clip_range,
            "n_epochs": set_attr("n_epochs", int),
            "batch_size": set_attr("batch_size", int),
        },
    )
)
