"""Import every protocol's party steps, so that this process's workers run them all.

Imported for its effect by ``fedsim worker serve``: a worker process answers
whichever protocol a coordinator drives.
"""

from __future__ import annotations

from mpc.protocols import release, sessions
from mpc.protocols.authenticated_shares import dealer_steps as authenticated_dealing
from mpc.protocols.authenticated_shares import steps as authenticated_shares
from mpc.protocols.encrypted_inference import steps as encrypted_inference
from mpc.protocols.he_aggregation import steps as he_aggregation
from mpc.protocols.remote_shares import dealt_steps as remote_dealt_shares
from mpc.protocols.remote_shares import held_steps as remote_held_shares
from mpc.protocols.remote_shares import steps as remote_shares
from mpc.protocols.secure_aggregation import steps as secure_aggregation
from mpc.protocols.secure_aggregation_mac import steps as secure_aggregation_mac

__all__ = [
    "authenticated_dealing",
    "authenticated_shares",
    "encrypted_inference",
    "he_aggregation",
    "release",
    "remote_dealt_shares",
    "remote_held_shares",
    "remote_shares",
    "secure_aggregation",
    "secure_aggregation_mac",
    "sessions",
]
