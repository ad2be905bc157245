"""Updates as a matrix: stack_updates / unstack_update are inverse, keep dtypes and counters."""

from __future__ import annotations

import pytest
import torch

from fl.errors import ConfigError
from fl.updates import stack_updates, unstack_update
from tests.fl.synthetic import tiny_round as attack_round


def tiny_round() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """test_attacks' round as states; the second client's counter moved on to 9."""
    glob, updates = attack_round()
    return glob, [dict(updates[0].state), {**updates[1].state, "n": torch.tensor(9)}]


def test_stack_updates_is_state_minus_global_and_unstack_inverts_it() -> None:
    # Prepare
    glob, states = tiny_round()

    # Execute
    keys, matrix = stack_updates(glob, states)
    back = unstack_update(glob, keys, matrix[1], states[1])

    # Assert: "n" is not floating, so it is not part of the update.
    assert keys == ("w", "h") and matrix.dtype == torch.float64
    assert torch.equal(
        matrix, torch.tensor([[1.0, 2.0, 0.5], [2.0, 0.0, 1.0]], dtype=torch.float64)
    )
    assert list(back) == ["w", "h", "n"]
    for key, t in states[1].items():
        assert torch.equal(back[key], t) and back[key].dtype == t.dtype


def test_unstack_update_takes_counters_from_the_global_state_by_default() -> None:
    glob, states = tiny_round()
    keys, matrix = stack_updates(glob, states)
    assert unstack_update(glob, keys, matrix[1])["n"].item() == 7


def test_stack_updates_rejects_mismatched_shapes() -> None:
    glob, _ = tiny_round()
    with pytest.raises(ConfigError, match="state 0 'w' is \\(3,\\), global has \\(2,\\)"):
        stack_updates(glob, [{"w": torch.zeros(3), "h": torch.zeros(1)}])


def test_unstack_update_rejects_a_row_of_the_wrong_length() -> None:
    glob, _ = tiny_round()
    with pytest.raises(ConfigError, match="expected \\(3,\\)"):
        unstack_update(glob, ("w", "h"), torch.zeros(4, dtype=torch.float64))
