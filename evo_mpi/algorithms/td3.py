"""TD3 (off-policy, continuous actions)."""

from . import Algorithm, register
from ._sb3 import ACTOR_CRITIC_SPACE, OFF_POLICY, set_action_noise, set_attr

TD3 = register(
    Algorithm(
        name="td3",
        sb3_class="stable_baselines3:TD3",
        off_policy=True,
        action_spaces=("Box",),
        default_space={
            **ACTOR_CRITIC_SPACE,
            "policy_delay": "int:1:4",
            "target_policy_noise": "uniform:0.1:0.4",
            "action_noise_sigma": "uniform:0.05:0.5",
        },
        appliers={
            **OFF_POLICY,
            "policy_delay": set_attr("policy_delay", int),
            "target_policy_noise": set_attr("target_policy_noise", float),
            "target_noise_clip": set_attr("target_noise_clip", float),
            "action_noise_sigma": set_action_noise,
        },
    )
)
