"""Resuming: a run's saved options against the ones given now."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .schema import FIELDS, RESUME_OVERRIDABLE, Config


def from_saved(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Config values from a run dir's ``config.json`` (extra keys dropped, missing ones default)."""
    return {k: v for k, v in saved.items() if k in FIELDS}


def differences(cfg: Config, saved: Mapping[str, Any]) -> list[str]:
    """Fields (other than layout/bookkeeping ones) where ``cfg`` differs from a saved config.

    A key missing from the saved config (an option added after the run
    started) counts as that option's default.
    """
    now = cfg.to_dict()
    old = {**Config().to_dict(), **saved}
    return [
        f"{name}: the run has {old[name]!r}, this command gives {now[name]!r}"
        for name in FIELDS
        if name not in RESUME_OVERRIDABLE and now[name] != old[name]
    ]
