"""SAC (off-policy, continuous actions)."""

from . import Algorithm, register
from ._sb3 import ACTOR_CRITIC_SPACE, OFF_POLICY, set_action_noise

SAC = register(
    Algorithm(
        name="sac",
        sb3_class="stable_baselines3:SAC",
        off_policy=True,
        action_spaces=("Box",),
        default_space=dict(ACTOR_CRITIC_SPACE),
        appliers={**OFF_POLICY, "action_noise_sigma": set_action_noise},
    )
)
