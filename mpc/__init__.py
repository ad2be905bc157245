"""Pure MPC library (ring arithmetic, fixed-point encoding, additive sharing,
crypto provider). Populated by the encrypted-computation work (issue 4)."""
