"""Party steps of encrypted inference (the worker side of ``mpc.encrypted_inference``)."""

from __future__ import annotations

from workers.party import PartyStep

__all__ = ["STEPS"]

STEPS: dict[str, PartyStep] = {}
