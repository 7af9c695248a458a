"""Fréchet distance (FD) of images in the feature space of difflab's own small classifier.

The Fréchet (2-Wasserstein) distance between N(μ1, Σ1) and N(μ2, Σ2) is (Dowson & Landau 1982)

    FD = ‖μ1 - μ2‖² + tr(Σ1 + Σ2 - 2 (Σ1^½ Σ2 Σ1^½)^½),

and FID (Heusel et al. 2017) is this distance between Gaussians fitted to the Inception-v3
features of two image sets. Inception weights cannot be downloaded here, so difflab measures FD
in the 128-d penultimate layer of :class:`difflab.nn.classifier.Classifier`, trained per dataset
by ``scripts/train_classifier.py`` and committed under ``difflab/assets`` with a JSON record
(accuracy, seed, sha256). Numbers are comparable only for one dataset, size and weight file.

The matrix square roots use ``torch.linalg.eigh`` on symmetric matrices in float64: Σ1^½ from
the eigendecomposition of Σ1, then tr(M^½) = Σ √λ_i(M) for the symmetric M = Σ1^½ Σ2 Σ1^½
(negative round-off eigenvalues clipped to 0). No scipy.

FD between finite samples is biased upwards by roughly tr(Σ)/n terms, so it depends on the
sample sizes. :meth:`FDEvaluator.floor` is the FD of the real held-out test split (seed 0) to
the real train split — what a perfect generator would score with as many samples as the test
split has (180 digits, 500 MNIST). Report it beside any FD, measured with that many samples.

What it sees (measured; floor digits-8 ≈ 50, MNIST ≈ 7.7): uniform noise images, shuffled pixels,
a 3×3 blur of digits-8 (≈ 10× the floor) or a 5×5 blur of MNIST (≈ 25×) stand far above the
floor; Gaussian pixel noise of σ = 0.3 gives 1.7× (digits-8) and 5.8× (MNIST). The classifiers of
digits upsampled to 16 and 32 pixels are nearly blind to pixel noise (σ ≤ 0.3) and, at 32, to
blur: those images hold only 8×8 worth of detail. Prefer digits-8 or MNIST for FD comparisons.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from torch import Tensor
from torch.nn import functional

from ..nn.attribute_classifier import AttributeClassifier, AttributeClassifierConfig
from ..nn.classifier import Classifier, ClassifierConfig
from . import images, shapes

_F64 = torch.float64
DEFAULT_SIZE = {"digits": 8, "mnist": 32, "shapes": 32}


# --- the distance ----------------------------------------------------------------------------
def feature_stats(feats: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (d,) and unbiased covariance (d, d) of the rows of feats (n, d), in float64."""
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need features of shape (n ≥ 2, d), got {tuple(feats.shape)}")
    f = feats.detach().to(_F64)
    mu = f.mean(dim=0)  # (d,)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)  # (d,), (d, d)


def _sqrtm_psd(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (d, d)."""
    lam, v = torch.linalg.eigh(0.5 * (s + s.T))
    return (v * lam.clamp(min=0).sqrt()) @ v.T


def frechet_distance_from_stats(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """‖μ1 - μ2‖² + tr(Σ1 + Σ2 - 2 (Σ1^½ Σ2 Σ1^½)^½) in float64 (see the module docstring)."""
    mu1, cov1, mu2, cov2 = (t.to(_F64) for t in (mu1, cov1, mu2, cov2))
    r1 = _sqrtm_psd(cov1)
    m = r1 @ cov2 @ r1  # (d, d), symmetric PSD
    tr_cross = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp(min=0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2.0 * tr_cross
    return max(fd.item(), 0.0)


def frechet_distance(feat_a: Tensor, feat_b: Tensor) -> float:
    """FD between Gaussians fitted to the features feat_a (n, d) and feat_b (m, d)."""
    if feat_a.shape[1:] != feat_b.shape[1:]:
        raise ValueError(f"feature shapes differ: {tuple(feat_a.shape)} vs {tuple(feat_b.shape)}")
    return frechet_distance_from_stats(*feature_stats(feat_a), *feature_stats(feat_b))


# --- the committed classifiers ---------------------------------------------------------------
def asset_name(dataset: str, size: int) -> str:
    return f"classifier_{dataset}_{size}"


def load_classifier(
    dataset: str, size: int, directory: str | Path | None = None
) -> tuple[Classifier, dict]:
    """The committed classifier for (dataset, size) and its JSON record; checks the sha256.

    ``directory``: where the asset files are; by default the package's ``difflab/assets``.
    """
    assets = resources.files("difflab") / "assets" if directory is None else Path(directory)
    name = asset_name(dataset, size)
    meta, weights = assets / f"{name}.json", assets / f"{name}.safetensors"
    if not meta.is_file() or not weights.is_file():
        have = sorted(
            p.name[len("classifier_") : -len(".json")]
            for p in (assets.iterdir() if assets.is_dir() else ())
            if p.name.startswith("classifier_") and p.name.endswith(".json")
        )
        raise ValueError(f"no committed classifier for {dataset} at size {size}; have {have}")
    record = json.loads(meta.read_text())
    blob = weights.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != record["sha256"]:
        raise ValueError(
            f"{weights.name}: sha256 {digest} does not match the record's {record['sha256']}"
        )
    if record.get("kind") == "attributes":  # shapes: data/shapes_eval.py
        model = AttributeClassifier(AttributeClassifierConfig.from_dict(record["config"]))
    else:
        model = Classifier(ClassifierConfig.from_dict(record["config"]))
    model.load_state_dict(st_load(blob))
    return model.eval().requires_grad_(False), record


@dataclass
class FDEvaluator:
    """FD and accuracy of image samples under one dataset's committed classifier.

    Images are (n, C, H, W) in [-1, 1] (C = 1, or 3 for shapes, whose classifier is a
    :class:`~difflab.nn.attribute_classifier.AttributeClassifier`); they are clamped to
    [-1, 1] first (as saving them as 8-bit images would). MNIST at 28×28 is padded to the
    32×32 the classifier was trained on.
    """

    classifier: Classifier | AttributeClassifier
    record: dict
    size: int  # the image size this evaluator accepts
    batch_size: int = 500
    _stats: dict = field(default_factory=dict, repr=False)

    @classmethod
    def for_dataset(
        cls,
        name: str,
        size: int | None = None,
        device: str = "cpu",
        directory: str | Path | None = None,
    ) -> FDEvaluator:
        """The evaluator of dataset ``name`` ("digits", "mnist" or "shapes") at ``size``."""
        if name not in DEFAULT_SIZE:
            raise ValueError(
                f"no classifier for dataset {name!r}; choose one of {list(DEFAULT_SIZE)}"
            )
        size = size or DEFAULT_SIZE[name]
        asset_size = 32 if (name, size) == ("mnist", 28) else size
        classifier, record = load_classifier(name, asset_size, directory)
        return cls(classifier.to(device), record, size)

    @property
    def name(self) -> str:
        return self.record["dataset"]

    def real(self, split: str) -> images.ImageData:
        """The dataset's seed-0 split the classifier was trained (train) or tested (test) on."""
        kw = self.record["data"] | ({"size": 28} if self.size == 28 else {})
        loader = shapes.shapes if self.name == "shapes" else getattr(images, self.name)
        return loader(split, seed=self.record["data_seed"], **kw)

    def _prepare(self, x: Tensor) -> Tensor:
        c = self.classifier.config.in_channels  # 1, or 3 for shapes
        if x.ndim != 4 or x.shape[1:] != (c, self.size, self.size):
            raise ValueError(
                f"expected images (n, {c}, {self.size}, {self.size}), got {tuple(x.shape)}"
            )
        x = x.clamp(-1.0, 1.0)
        if self.size == 28:
            x = functional.pad(x, (2, 2, 2, 2), value=-1.0)  # MNIST 28 -> the padded 32
        return x

    @torch.inference_mode()
    def _apply(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        device = next(self.classifier.parameters()).device
        x = self._prepare(x.detach().float())
        out = [fn(b.to(device)).cpu() for b in x.split(self.batch_size)]
        return torch.cat(out)

    def features(self, x: Tensor) -> Tensor:
        """Classifier features (n, d) of images x (n, 1, H, W)."""
        return self._apply(self.classifier.features, x)

    def logits(self, x: Tensor) -> Tensor:
        return self._apply(self.classifier, x)  # (n, num_classes)

    def _ref_stats(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in self._stats:
            self._stats[split] = feature_stats(self.features(self.real(split).x))
        return self._stats[split]

    def fd(self, samples: Tensor, reference: Tensor | None = None) -> float:
        """FD of samples (n, 1, H, W) to reference images, by default the real train split."""
        if reference is None:
            ref = self._ref_stats("train")
        else:
            ref = feature_stats(self.features(reference))
        return frechet_distance_from_stats(*feature_stats(self.features(samples)), *ref)

    def accuracy(self, samples: Tensor, labels: Tensor) -> float:
        """Fraction of samples (n, 1, H, W) classified as their ``labels`` (n,)."""
        # an attribute classifier (shapes): the head of the labels y
        pred = self._apply(getattr(self.classifier, "label_logits", self.classifier),
                           samples).argmax(dim=1)
        return (pred == labels.cpu()).double().mean().item()

    def floor(self) -> float:
        """FD of the real test split to the real train split (seed 0): the floor for fd()."""
        return frechet_distance_from_stats(*self._ref_stats("test"), *self._ref_stats("train"))
