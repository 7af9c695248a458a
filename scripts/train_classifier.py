"""Train the classifiers whose features define difflab's image FD, and write them as assets.

    nice -n 19 python scripts/train_classifier.py              # all four: digits 8/16/32, mnist 32
    python scripts/train_classifier.py --dataset digits --size 8 --epochs 5 --out-dir /tmp/clf

For each (dataset, size) it trains :class:`difflab.nn.classifier.Classifier` on the seed-0
train split (AdamW, cosine learning rate, random integer shifts of up to size/8 pixels and
in-bin uniform dequantisation noise as augmentation), prints train and test accuracy, and writes
``classifier_<dataset>_<size>.safetensors`` and ``.json`` (config, data options, accuracies,
seed, FD floor, sha256 of the weight file) to ``--out-dir`` (default ``src/difflab/assets``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import save as st_save
from torch import Tensor

from difflab.data import images
from difflab.data.fd import asset_name, feature_stats, frechet_distance_from_stats
from difflab.nn.classifier import Classifier, ClassifierConfig

TARGETS = {  # (dataset, size): options of the loader, epochs
    ("digits", 8): ({"size": 8}, 60),
    ("digits", 16): ({"size": 16, "mode": "bilinear"}, 60),
    ("digits", 32): ({"size": 32, "mode": "bilinear"}, 40),
    ("mnist", 32): ({"size": 32, "pad": True}, 30),
}
DATA_SEED = 0  # the split the evaluator uses


def random_shift(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    """Shift each image of x (B, C, H, W) by integers in [-s, s] on each axis, filling with -1."""
    B, C, H, W = x.shape
    xp = torch.nn.functional.pad(x, (s, s, s, s), value=-1.0)  # (B, C, H+2s, W+2s)
    oy, ox = torch.randint(0, 2 * s + 1, (2, B, 1), generator=g)  # (B, 1) each
    rows = (oy + torch.arange(H))[:, None, :, None]  # (B, 1, H, 1)
    cols = (ox + torch.arange(W))[:, None, None, :]  # (B, 1, 1, W)
    b = torch.arange(B)[:, None, None, None]
    c = torch.arange(C)[None, :, None, None]
    return xp[b, c, rows, cols]  # (B, C, H, W)


@torch.inference_mode()
def evaluate(model: Classifier, data: images.ImageData) -> tuple[float, Tensor]:
    """Accuracy and features (n, d) of the model on data."""
    model.eval()
    feats = torch.cat([model.features(b) for b in data.x.split(500)])
    acc = (model.head(feats).argmax(1) == data.y).double().mean().item()
    return acc, feats


def train_one(dataset: str, size: int, epochs: int, seed: int, out_dir: Path, batch: int) -> dict:
    data_kw, default_epochs = TARGETS[(dataset, size)]
    epochs = epochs or default_epochs
    loader = getattr(images, dataset)
    train, test = (loader(split, seed=DATA_SEED, **data_kw) for split in ("train", "test"))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    cfg = ClassifierConfig()
    model = Classifier(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(train) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=g)
        total = 0.0
        for idx in perm.split(batch):
            x = random_shift(train.x[idx], max(1, size // 8), g)
            x = images.dequantize(x, train.levels, g)
            loss = torch.nn.functional.cross_entropy(model(x), train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            print(f"  {dataset}-{size} epoch {epoch + 1}/{epochs} loss {total / len(train):.4f}")
    train_acc, f_train = evaluate(model, train)
    test_acc, f_test = evaluate(model, test)
    floor = frechet_distance_from_stats(*feature_stats(f_test), *feature_stats(f_train))
    blob = st_save({k: v.contiguous() for k, v in model.state_dict().items()})
    name = asset_name(dataset, size)
    record = {
        "dataset": dataset,
        "size": size,
        "data": data_kw,
        "data_seed": DATA_SEED,
        "seed": seed,
        "epochs": epochs,
        "config": cfg.to_dict(),
        "n_train": len(train),
        "n_test": len(test),
        "train_accuracy": round(train_acc, 6),
        "test_accuracy": round(test_acc, 6),
        "fd_floor": round(floor, 6),
        "torch": torch.__version__,
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.safetensors").write_bytes(blob)
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{name}: train acc {train_acc:.4f}  test acc {test_acc:.4f}  FD floor {floor:.4f}  "
        f"{len(blob) / 1e3:.0f} kB  {time.time() - t0:.0f} s"
    )
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["all", "digits", "mnist"], default="all")
    p.add_argument("--size", type=int, default=None, help="only this image size")
    p.add_argument("--epochs", type=int, default=0, help="0: the default per dataset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parents[1] / "src/difflab/assets")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    todo = [k for k in TARGETS if a.dataset in ("all", k[0]) and a.size in (None, k[1])]
    if not todo:
        p.error(f"nothing to train for --dataset {a.dataset} --size {a.size}; have {list(TARGETS)}")
    for dataset, size in todo:
        train_one(dataset, size, a.epochs, a.seed, a.out_dir, a.batch)


if __name__ == "__main__":
    main()
