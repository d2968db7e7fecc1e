"""DDPG (off-policy, continuous actions; SB3 implements it as TD3 without delay or target noise)."""

from . import Algorithm, register
from ._sb3 import ACTOR_CRITIC_SPACE, OFF_POLICY, set_action_noise

DDPG = register(
    Algorithm(
        name="ddpg",
        sb3_class="stable_baselines3:DDPG",
        off_policy=True,
        action_spaces=("Box",),
        default_space={**ACTOR_CRITIC_SPACE, "action_noise_sigma": "uniform:0.05:0.5"},
        appliers={**OFF_POLICY, "action_noise_sigma": set_action_noise},
    )
)
