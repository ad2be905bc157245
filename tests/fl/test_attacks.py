from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import torch

from fl.aggregation import ClientUpdate, FedAvg, Strategy
from fl.attacks import (
    AttackedStrategy,
    AttackSpec,
    alie,
    alie_z,
    choose_attackers,
    flip_labels,
    gaussian_noise,
    parse_attack,
    poison_split,
    scale_update,
    sign_flip,
)
from fl.data import Split
from fl.errors import ConfigError, DataError
from tests.fl.synthetic import tiny_round

IDS = tuple(f"c{i}" for i in range(10))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- parse_attack / AttackSpec -------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "k"),
    [("none", 0), ("label-flip", 1), ("sign-flip", 3), ("noise", 2), ("scale", 1), ("ALIE", 2)],
)
def test_parse_attack_accepts_valid_input(kind: str, k: int) -> None:
    spec = parse_attack(kind, k)
    assert spec.kind == kind.lower() and spec.attackers == k
    assert spec.noise_std == 1.0 and spec.scale is None and spec.alie_z is None


@pytest.mark.parametrize(
    ("kind", "k", "match"),
    [
        ("backdoor", 1, "unknown attack 'backdoor': expected one of none, label-flip"),
        ("noise", -1, "attackers must be >= 0, got -1"),
        ("none", 2, "'none' needs attackers = 0, got 2"),
        ("scale", 0, "'scale' needs attackers >= 1, got 0"),
    ],
)
def test_parse_attack_rejects_bad_input_in_one_line(kind: str, k: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_attack(kind, k)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"noise_std": -1.0}, {"noise_std": math.inf}, {"scale": 0.0}, {"alie_z": math.nan}],
)
def test_attack_spec_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        AttackSpec(kind="noise", attackers=1, **kwargs)


# --- choose_attackers ----------------------------------------------------------


def test_choose_attackers_is_deterministic_per_seed_and_in_client_order() -> None:
    # Execute
    first = choose_attackers(IDS, 3, gen(1))
    again = choose_attackers(IDS, 3, gen(1))
    others = {choose_attackers(IDS, 3, gen(s)) for s in range(2, 12)}

    # Assert
    assert first == again and len(first) == 3 and len(set(first)) == 3
    assert list(first) == sorted(first, key=IDS.index)
    assert others - {first}, "ten other seeds should not all pick the same attackers"


@pytest.mark.parametrize("k", [0, 1, 10])
def test_choose_attackers_count(k: int) -> None:
    assert len(choose_attackers(IDS, k, gen(0))) == k


@pytest.mark.parametrize(("ids", "k"), [(IDS, 11), (IDS, -1), (("a", "a"), 1)])
def test_choose_attackers_rejects_bad_input(ids: tuple[str, ...], k: int) -> None:
    with pytest.raises(ConfigError):
        choose_attackers(ids, k, gen(0))


# --- pure update attacks -------------------------------------------------------


def test_sign_flip_and_scale_match_hand_computation() -> None:
    u = torch.tensor([[1.0, -2.0], [0.0, 3.0]], dtype=torch.float64)
    assert torch.equal(sign_flip(u), torch.tensor([[-1.0, 2.0], [0.0, -3.0]], dtype=torch.float64))
    assert torch.equal(sign_flip(u, 2.0), -2 * u)
    assert torch.equal(scale_update(u, 10.0), torch.tensor([[10.0, -20.0], [0.0, 30.0]]).double())
    assert torch.equal(u, torch.tensor([[1.0, -2.0], [0.0, 3.0]]).double()), "input mutated"


def test_gaussian_noise_has_requested_std_and_is_seeded() -> None:
    # Prepare: 10⁶ draws, so the sample std is within ~0.1 % of σ (se ≈ σ/√(2N)).
    update = torch.full((1_000_000,), 5.0, dtype=torch.float64)

    # Execute
    noisy = gaussian_noise(update, 2.0, gen(3))
    same = gaussian_noise(update, 2.0, gen(3))
    other = gaussian_noise(update, 2.0, gen(4))

    # Assert
    noise = (noisy - update).numpy()
    assert abs(noise.mean()) < 0.01
    assert noise.std() == pytest.approx(2.0, rel=0.005)
    assert torch.equal(noisy, same) and not torch.equal(noisy, other)


def test_alie_z_matches_paper_formula_for_n10_m2() -> None:
    # Prepare: Baruch et al. 2019: s = ⌊n/2 + 1⌋ − m = 6 − 2 = 4; z = Φ⁻¹((n − s)/n) = Φ⁻¹(0.6).
    n, m = 10, 2
    s = (n // 2 + 1) - m
    p = (n - s) / n
    # Φ⁻¹ by bisection on Φ(z) = (1 + erf(z/√2))/2, independent of statistics.NormalDist.
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 + math.erf(mid / math.sqrt(2))) / 2 < p else (lo, mid)

    # Execute
    z = alie_z(n, m)

    # Assert
    assert s == 4 and p == 0.6
    assert z == pytest.approx(lo, abs=1e-9) and z == pytest.approx(0.2533471, abs=1e-6)


def test_alie_z_caps_attacker_majority() -> None:
    # n = 3, m = 2: s = 0 → capped to 1, z = Φ⁻¹(2/3); one client alone: 0.
    assert alie_z(3, 2) == pytest.approx(0.4307273, abs=1e-6)
    assert alie_z(1, 1) == 0.0
    with pytest.raises(ConfigError):
        alie_z(3, 4)


def test_alie_is_mean_minus_z_population_std() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 50))

    # Execute
    out = alie(torch.from_numpy(x), 1.5)

    # Assert
    np.testing.assert_allclose(out.numpy(), x.mean(axis=0) - 1.5 * x.std(axis=0), rtol=1e-12)


# --- label flipping ------------------------------------------------------------


def test_flip_labels_maps_y_to_9_minus_y_without_mutating() -> None:
    # Prepare
    split = Split(torch.zeros(10, 1, 28, 28), torch.arange(10))

    # Execute
    flipped = flip_labels(split)

    # Assert
    assert flipped.y.tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert flipped.y.dtype == torch.int64 and flipped.x is split.x
    assert split.y.tolist() == list(range(10))


def test_flip_labels_rejects_out_of_range_labels() -> None:
    with pytest.raises(DataError, match="labels must be in \\[0, 10\\)"):
        flip_labels(Split(torch.zeros(1, 1, 28, 28), torch.tensor([10])))


def test_poison_split_flips_only_data_attackers() -> None:
    split = Split(torch.zeros(2, 1, 28, 28), torch.tensor([0, 3]))
    spec = parse_attack("label-flip", 1)
    assert poison_split(spec, ("b",), "b", split).y.tolist() == [9, 6]
    assert poison_split(spec, ("b",), "a", split) is split
    assert poison_split(parse_attack("scale", 1), ("b",), "b", split).y.tolist() == [9, 6]
    assert poison_split(parse_attack("sign-flip", 1), ("b",), "b", split) is split


# --- AttackedStrategy ----------------------------------------------------------


def attacked(kind: str, **params: float) -> AttackedStrategy:
    spec = AttackSpec(kind=kind, attackers=1, **params)
    return AttackedStrategy(FedAvg(), spec, ("b",), gen(0))


def test_sign_flip_attacker_moves_fedavg_as_hand_computed() -> None:
    # Prepare: κ = 1: Δ_b = [2, 0] → −Δ_b → b sends [−1, 1]; FedAvg = ([2, 3] + [−1, 1])/2
    # = [0.5, 2]. h: Δ_b = 1.0 → b sends −0.5; FedAvg = (1.0 − 0.5)/2 = 0.25.
    # Default κ = 4: b sends [1, 1] − 4·[2, 0] = [−7, 1]; FedAvg = [−2.5, 2].
    glob, updates = tiny_round()
    honest_a = updates[0]

    # Execute
    result = attacked("sign-flip", sign_factor=1.0).aggregate(glob, updates)
    default = attacked("sign-flip").aggregate(glob, updates)

    # Assert
    assert torch.equal(result["w"], torch.tensor([0.5, 2.0]))
    assert torch.equal(default["w"], torch.tensor([-2.5, 2.0]))
    assert result["h"].dtype == torch.float16 and result["h"].item() == 0.25
    assert result["n"].dtype == torch.int64 and result["n"].item() == 7
    assert list(result) == ["w", "h", "n"]
    assert updates[0] is honest_a and torch.equal(updates[1].state["w"], torch.tensor([3.0, 1.0]))


def test_scale_defaults_to_round_size_model_replacement() -> None:
    # Prepare: n = 2 → b sends 1 + 2·[2, 0] = [5, 1]; FedAvg = ([2, 3] + [5, 1])/2 = [3.5, 2].
    glob, updates = tiny_round()

    # Execute
    default = attacked("scale").aggregate(glob, updates)
    explicit = attacked("scale", scale=3.0).aggregate(glob, updates)

    # Assert: explicit γ = 3 → b sends [7, 1]; FedAvg = [4.5, 2].
    assert torch.equal(default["w"], torch.tensor([3.5, 2.0]))
    assert torch.equal(explicit["w"], torch.tensor([4.5, 2.0]))


def test_alie_attackers_send_mean_minus_z_std_of_all_honest_updates() -> None:
    # Prepare: Δ_a = [1, 2], Δ_b = [2, 0]; mean [1.5, 1], population std [0.5, 1]; z = 1
    # → b sends 1 + [1, 0] = [2, 1]; FedAvg = ([2, 3] + [2, 1])/2 = [2, 2].
    glob, updates = tiny_round()

    # Execute
    result = attacked("alie", alie_z=1.0).aggregate(glob, updates)
    default_z = attacked("alie").aggregate(glob, updates)

    # Assert: default z for n = 2, m = 1 is Φ⁻¹(1/2) = 0 → b sends the mean [2.5, 2].
    assert torch.equal(result["w"], torch.tensor([2.0, 2.0]))
    assert torch.equal(default_z["w"], torch.tensor([2.25, 2.5]))


def test_noise_attack_is_seeded_and_leaves_honest_clients_alone() -> None:
    # Prepare
    glob, updates = tiny_round()
    spec = AttackSpec(kind="noise", attackers=1, noise_std=0.5)

    # Execute
    r1 = AttackedStrategy(FedAvg(), spec, ("b",), gen(5)).aggregate(glob, updates)
    r2 = AttackedStrategy(FedAvg(), spec, ("b",), gen(5)).aggregate(glob, updates)
    noise = torch.randn(3, generator=gen(5), dtype=torch.float64) * 0.5

    # Assert: FedAvg = (a + b + noise)/2, so noise = 2·result − a − b.
    assert torch.equal(r1["w"], r2["w"])
    expected = (torch.tensor([5.0, 4.0], dtype=torch.float64) + noise[:2]) / 2
    torch.testing.assert_close(r1["w"], expected.float())


@pytest.mark.parametrize("kind", ["label-flip", "sign-flip", "alie"])
def test_updates_pass_unchanged_without_sampled_attackers_or_for_label_flip(kind: str) -> None:
    # Prepare
    glob, updates = tiny_round()
    attackers = ("b",) if kind == "label-flip" else ("zz",)
    strategy = AttackedStrategy(FedAvg(), parse_attack(kind, 1), attackers, gen(0))

    # Execute
    result = strategy.aggregate(glob, updates)

    # Assert
    expected = FedAvg().aggregate(glob, updates)
    assert all(torch.equal(result[k], expected[k]) for k in expected)


class ReportingStrategy(Strategy):
    name = "reporting"

    def __init__(self) -> None:
        self.last_report: object | None = None
        self.seen: list[ClientUpdate] = []

    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        self.seen = list(updates)
        self.last_report = {"n": len(updates)}
        return dict(global_state)


def test_wrapper_exposes_inner_name_report_sampling_and_attackers() -> None:
    # Prepare
    inner = ReportingStrategy()
    strategy = AttackedStrategy(inner, parse_attack("sign-flip", 1), ("b",), gen(0))
    glob, updates = tiny_round()

    # Execute
    strategy.aggregate(glob, updates)
    sampled = strategy.sample_clients(list(IDS), 0.3, gen(9))

    # Assert
    assert strategy.name == "reporting" and strategy.attackers == ("b",)
    assert strategy.last_report == {"n": 2}
    assert sampled == inner.sample_clients(list(IDS), 0.3, gen(9))
    assert inner.seen[0] is updates[0] and inner.seen[1] is not updates[1]
    assert inner.seen[1].num_samples == 1 and inner.seen[1].client_id == "b"
    assert AttackedStrategy(FedAvg(), parse_attack("noise", 1), ("b",), gen(0)).last_report is None


def test_wrapper_rejects_attacker_count_mismatch() -> None:
    with pytest.raises(ConfigError, match="spec has 2 attackers but 1 ids"):
        AttackedStrategy(FedAvg(), parse_attack("noise", 2), ("b",), gen(0))
