from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fl.errors import ConfigError, DataError
from fl.models import MODELS, McMahanCNN, PolyActivation, build_model, get_state, set_state


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_map_images_to_ten_logits(name: str) -> None:
    # Prepare
    model = build_model(name, seed=0)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    # Execute
    out = model(x)

    # Assert
    assert out.shape == (4, 10)
    assert bool(torch.isfinite(out).all())


def test_mcmahan_cnn_parameter_count() -> None:
    # Prepare: conv1, conv2, fc1, fc2 weights + biases, by hand.
    expected = (32 * 1 * 25 + 32) + (64 * 32 * 25 + 64) + (3136 * 512 + 512) + (512 * 10 + 10)

    # Execute
    count = sum(p.numel() for p in McMahanCNN().parameters())

    # Assert
    assert count == expected == 1_663_370


def test_mpc_cnn_uses_only_mpc_friendly_layers() -> None:
    # Execute
    kinds = {type(m) for m in build_model("mpc-cnn").modules()}

    # Assert
    assert nn.MaxPool2d not in kinds and nn.ReLU not in kinds
    assert nn.AvgPool2d in kinds and PolyActivation in kinds


def test_poly_activation_matches_numpy() -> None:
    # Prepare
    x = np.linspace(-3, 3, 13, dtype=np.float32)

    # Execute
    out = PolyActivation()(torch.from_numpy(x)).numpy()

    # Assert
    np.testing.assert_allclose(out, 0.125 * x * x + 0.5 * x + 0.25, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_seeded_build_is_deterministic_and_leaves_global_rng_alone(name: str) -> None:
    with torch.random.fork_rng(devices=[]):  # keep other tests' global RNG as it was
        # Prepare
        torch.manual_seed(123)
        expected_next = torch.rand(3)
        torch.manual_seed(123)

        # Execute
        a, b, c = build_model(name, seed=5), build_model(name, seed=5), build_model(name, seed=6)
        after = torch.rand(3)

    # Assert
    sa, sb, sc = get_state(a), get_state(b), get_state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert torch.equal(after, expected_next)


def test_build_model_rejects_unknown_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet': expected one of cnn, mlp"):
        build_model("resnet")


def test_get_state_set_state_round_trip() -> None:
    # Prepare
    source, target = build_model("mlp", seed=0), build_model("mlp", seed=1)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    # Execute
    state = get_state(source)
    set_state(target, state)

    # Assert
    assert list(state) == [name for name, _ in source.named_parameters()]
    assert all(not t.requires_grad and t.is_contiguous() for t in state.values())
    assert torch.equal(source(x), target(x))
    state["fc1.weight"].zero_()  # a copy: the model must not change
    assert not bool((get_state(source)["fc1.weight"] == 0).all())


def test_set_state_rejects_mismatches() -> None:
    # Prepare
    model = build_model("mlp", seed=0)
    state = get_state(model)
    missing = {k: v for k, v in state.items() if k != "fc3.bias"}
    extra = {**state, "fc9.weight": torch.zeros(1)}
    wrong_shape = {**state, "fc2.bias": torch.zeros(3)}

    # Execute / Assert
    with pytest.raises(DataError, match=r"missing \['fc3.bias'\]"):
        set_state(model, missing)
    with pytest.raises(DataError, match=r"unexpected \['fc9.weight'\]"):
        set_state(model, extra)
    with pytest.raises(DataError, match=r"'fc2.bias' has shape \(3,\), model expects \(200,\)"):
        set_state(model, wrong_shape)
