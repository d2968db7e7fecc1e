"""What a ``module:Name`` option names: the user's env (``--env-id``) or member factory (``--member``).

Runtime lookups, used by validation (to check them before any rank starts)
and by the members and engines (to build them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def resolve_env(env_id: str) -> Any:
    """What to build for ``env_id``: a gymnasium id, or a user's class/factory.

    ``module:Name`` imports ``module``; if ``Name`` is a callable attribute of it
    (an ``Env`` subclass or a function returning an env) that is used, otherwise
    ``Name`` is a gymnasium id the module registered on import.
    """
    if ":" in env_id:
        module_name, name = env_id.split(":", 1)
        target = getattr(importlib.import_module(module_name), name, None)
        return target if callable(target) else name
    return env_id


def resolve_member(spec: str) -> Callable[..., Any]:
    """The member factory named ``module:function``."""
    module_name, sep, name = spec.partition(":")
    if not sep:
        raise ValueError("expected module:function")
    target = getattr(importlib.import_module(module_name), name)
    if not callable(target):
        raise TypeError(f"{name} is not callable")
    return target  # type: ignore[no-any-return]
