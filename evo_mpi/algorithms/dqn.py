"""DQN (off-policy, discrete actions)."""

from . import Algorithm, register
from ._sb3 import OFF_POLICY, RL_SPACE, set_attr, set_exploration_final_eps

DQN = register(
    Algorithm(
        name="dqn",
        sb3_class="stable_baselines3:DQN",
        off_policy=True,
        action_spaces=("Discrete",),
        default_space={
            **RL_SPACE,
            "batch_size": "choice:32,64,128,256",
            "target_update_interval": "int:100:5000",
            "exploration_final_eps": "uniform:0.01:0.2",
        },
        appliers={
            **OFF_POLICY,
            "target_update_interval": set_attr("target_update_interval", int),
            "exploration_final_eps": set_exploration_final_eps,
        },
    )
)
