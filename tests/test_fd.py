"""difflab.data.fd: the Fréchet distance in closed form, and the committed feature classifiers."""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch

from difflab.data import images
from difflab.data.fd import (
    FDEvaluator,
    feature_stats,
    frechet_distance,
    frechet_distance_from_stats,
    load_classifier,
)

_F64 = torch.float64
ASSETS = Path(str(resources.files("difflab") / "assets"))
COMMITTED = [("digits", 8), ("digits", 16), ("digits", 32), ("mnist", 32)]


def _random_cov(d: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=_F64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=_F64)  # (d, d), SPD, not diagonal


# --- the distance ----------------------------------------------------------------------------
def test_zero_for_identical_sets_and_symmetric() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 16, generator=g) @ torch.randn(16, 16, generator=g)  # correlated
    b = torch.randn(200, 16, generator=g) * 2 + 1
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


def test_diagonal_gaussians_closed_form() -> None:
    # N(μ1, diag σ1²) vs N(μ2, diag σ2²): ‖μ1 - μ2‖² + Σ (σ1 - σ2)²
    g = torch.Generator().manual_seed(1)
    mu1, mu2 = torch.randn(8, generator=g, dtype=_F64), torch.randn(8, generator=g, dtype=_F64)
    s1, s2 = torch.rand(8, generator=g, dtype=_F64) + 0.1, torch.rand(8, generator=g, dtype=_F64)
    expected = (mu1 - mu2).square().sum() + (s1 - s2).square().sum()
    got = frechet_distance_from_stats(mu1, s1.square().diag(), mu2, s2.square().diag())
    assert got == pytest.approx(expected.item(), rel=1e-10)


def test_general_covariances_match_the_eigenvalues_of_the_product() -> None:
    # tr (Σ1^½ Σ2 Σ1^½)^½ = Σ √λ_i(Σ1 Σ2): Σ1 Σ2 is similar to the symmetric PSD matrix
    g = torch.Generator().manual_seed(2)
    c1, c2 = _random_cov(12, g), _random_cov(12, g)
    mu1, mu2 = torch.randn(12, generator=g, dtype=_F64), torch.zeros(12, dtype=_F64)
    tr_cross = torch.linalg.eigvals(c1 @ c2).real.clamp(min=0).sqrt().sum()
    expected = mu1.square().sum() + c1.trace() + c2.trace() - 2 * tr_cross
    assert frechet_distance_from_stats(mu1, c1, mu2, c2) == pytest.approx(expected.item(), rel=1e-9)
    # rank-deficient covariances (fewer samples than dimensions) stay finite and ≥ 0
    a, b = torch.randn(5, 12, generator=g), torch.randn(5, 12, generator=g)
    assert 0.0 <= frechet_distance(a, b) < float("inf")


def test_samples_of_two_gaussians_approach_the_closed_form() -> None:
    g = torch.Generator().manual_seed(3)
    d, n = 4, 200_000
    s1, s2 = torch.tensor([1.0, 0.5, 2.0, 1.0]), torch.tensor([1.5, 0.5, 1.0, 0.2])
    mu2 = torch.tensor([1.0, 0.0, -1.0, 0.5])
    a = torch.randn(n, d, generator=g) * s1
    b = torch.randn(n, d, generator=g) * s2 + mu2
    expected = mu2.square().sum() + (s1 - s2).square().sum()  # 2.25 + 1.89 = 4.14
    assert frechet_distance(a, b) == pytest.approx(expected.item(), abs=0.03)


def test_a_shift_adds_its_squared_length() -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.randn(500, 10, generator=g, dtype=_F64)
    v = torch.randn(10, generator=g, dtype=_F64)
    fds = [frechet_distance(a, a + c * v) for c in (0.0, 0.5, 1.0, 2.0)]
    assert fds == sorted(fds)
    for c, fd in zip((0.0, 0.5, 1.0, 2.0), fds, strict=True):
        assert fd == pytest.approx(c**2 * v.square().sum().item(), abs=1e-8)


def test_feature_stats_and_shape_errors() -> None:
    x = torch.randn(50, 3, dtype=_F64)
    mu, cov = feature_stats(x)
    assert torch.allclose(mu, x.mean(0)) and torch.allclose(cov, torch.cov(x.T))
    with pytest.raises(ValueError, match="n ≥ 2"):
        feature_stats(x[:1])
    with pytest.raises(ValueError, match="feature shapes differ"):
        frechet_distance(x, x[:, :2])


# --- the committed classifiers ---------------------------------------------------------------
@pytest.mark.parametrize(("name", "size"), COMMITTED)
def test_committed_weights_match_their_record(name: str, size: int) -> None:
    record = json.loads((ASSETS / f"classifier_{name}_{size}.json").read_text())
    blob = (ASSETS / f"classifier_{name}_{size}.safetensors").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == record["sha256"]
    assert len(blob) < 1_000_000
    assert (record["dataset"], record["size"], record["data_seed"]) == (name, size, 0)
    ev = FDEvaluator.for_dataset(name, size)
    test = ev.real("test")
    assert len(test) == record["n_test"]
    acc = ev.accuracy(test.x, test.y)
    assert acc == pytest.approx(record["test_accuracy"], abs=1.01 / len(test))  # ≤ 1 flip
    assert acc >= 0.95


def test_a_changed_weight_file_is_refused(tmp_path: Path) -> None:
    for ext in (".json", ".safetensors"):
        shutil.copy(ASSETS / f"classifier_digits_8{ext}", tmp_path)
    load_classifier("digits", 8, tmp_path)  # the intact copy loads
    w = tmp_path / "classifier_digits_8.safetensors"
    blob = bytearray(w.read_bytes())
    blob[-1] ^= 1
    w.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="sha256"):
        load_classifier("digits", 8, tmp_path)
    with pytest.raises(ValueError, match="no committed classifier for digits at size 12"):
        FDEvaluator.for_dataset("digits", 12)
    with pytest.raises(ValueError, match="no classifier for dataset 'cifar'"):
        FDEvaluator.for_dataset("cifar")


def _corruptions(x: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Noise, a box blur (3×3 up to 16×16 images, 5×5 above), and shuffled pixels."""
    n, _, h, w = x.shape
    perm = torch.randperm(h * w, generator=g)
    k = 3 if h <= 16 else 5
    return {
        "noise": torch.rand(x.shape, generator=g) * 2 - 1,
        "blur": torch.nn.functional.avg_pool2d(x, k, 1, k // 2, count_include_pad=False),
        "shuffled": x.flatten(1)[:, perm].view_as(x),
    }


def test_digits_floor_is_far_below_corrupted_images() -> None:
    ev = FDEvaluator.for_dataset("digits")  # 8×8
    test = ev.real("test")
    floor = ev.floor()  # FD(real test, real train)
    assert floor == pytest.approx(ev.record["fd_floor"], rel=1e-3)
    assert ev.fd(test.x) == pytest.approx(floor, rel=1e-9)  # fd() defaults to the train split
    for what, x in _corruptions(test.x, torch.Generator().manual_seed(0)).items():
        assert ev.fd(x) > 5 * floor, what
    # and FD grows with the amount of noise added to real images
    g = torch.Generator().manual_seed(1)
    fds = [ev.fd(test.x + s * torch.randn(test.x.shape, generator=g)) for s in (0.0, 0.2, 0.5)]
    assert fds == sorted(fds)


def test_mnist_real_halves_are_far_below_corrupted_images() -> None:
    # the train split costs seconds of features; two halves of the test split make the point
    ev = FDEvaluator.for_dataset("mnist")  # 32×32, padded
    x = ev.real("test").x
    a, b = x[:250], x[250:]
    same = ev.fd(a, b)
    for what, bad in _corruptions(a, torch.Generator().manual_seed(0)).items():
        assert ev.fd(bad, b) > 5 * same, what


def test_mnist_28_is_padded_to_the_32_classifier() -> None:
    ev28, ev32 = FDEvaluator.for_dataset("mnist", 28), FDEvaluator.for_dataset("mnist", 32)
    x28 = images.mnist("test", size=28).x[:50]
    x32 = images.mnist("test", size=32).x[:50]
    assert torch.equal(ev28.features(x28), ev32.features(x32))
    with pytest.raises(ValueError, match=r"expected images \(n, 1, 32, 32\)"):
        ev32.features(x28)
