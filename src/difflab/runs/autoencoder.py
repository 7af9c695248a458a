"""What a finished autoencoder run writes (LDM's table of first-stage models, Rombach et al.
2022, Tab. 8): PSNR and reconstruction FD (rFD: the FD of the held-out test images'
reconstructions to those images, in the committed classifier's features) on the test split, the
codebook's usage and perplexity for VQ, the latent scale for latent runs (1/std of the latents
over the training set), and reconstructions.png: rows of test images, each above its
reconstruction.

The VQ scale: LDM uses VQ latents unscaled. difflab does so while their std lies within
:data:`VQ_UNSCALED` of 1, and scales them like KL latents otherwise (the measured std decides).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..autoencoding import psnr
from ..build.data import image_split
from ..config import TrainConfig, image_size
from ..nn.autoencoder import Autoencoder
from ..nn.quantizer import VectorQuantizer
from ..pipelines.latent import latent_std
from . import checkpoint as ckpt

VQ_UNSCALED = (0.5, 2.0)  # VQ latents with a std in this range are used as they are
GRID_ROWS = 4  # reconstructions.png: this many pairs of rows of 8 images


@torch.inference_mode()
def reconstructions(ae: Autoencoder, x: Tensor, batch: int = 500) -> tuple[Tensor, Tensor]:
    """(x̃ (N, C, H, W) from the posterior mean, code counts (K,) or an empty tensor)."""
    device = next(ae.parameters()).device
    out, counts = [], torch.zeros(0, dtype=torch.long)
    for xb in x.split(batch):
        h = ae.encode(xb.to(device))
        z = ae.latent(h)
        if ae.quantizer is not None:
            q = ae.quantizer(z)
            counts = q.counts.cpu() if counts.numel() == 0 else counts + q.counts.cpu()
            out.append(ae.decoder(q.z_q).cpu())
        else:
            out.append(ae.decoder(z).cpu())
    return torch.cat(out), counts


def latent_scale(ae: Autoencoder, std: float) -> float:
    """1/std for KL latents; 1 for VQ latents whose std lies in :data:`VQ_UNSCALED`."""
    if ae.quantizer is not None and VQ_UNSCALED[0] <= std <= VQ_UNSCALED[1]:
        return 1.0
    return 1.0 / std


def evaluate_autoencoder(cfg: TrainConfig, ae: Autoencoder) -> tuple[dict, Tensor, Tensor]:
    """(metrics, test images, their reconstructions) of an autoencoder on the run's data."""
    from ..data.fd import DEFAULT_SIZE, FDEvaluator

    test = image_split(cfg, "test").x  # (N, C, H, W)
    rec, counts = reconstructions(ae, test)
    rec = rec.clamp(-1.0, 1.0)
    g = torch.Generator().manual_seed(cfg.seed)
    std = latent_std(ae, image_split(cfg, "train").x, g)
    m = {"psnr": float(psnr(test, rec).mean()), "n_test": len(test),
         "latent_std": std, "latent_scale": latent_scale(ae, std),
         "latent_shape": list(ae.latent_shape(tuple(test.shape[1:])))}
    if cfg.dataset in DEFAULT_SIZE:
        fd = FDEvaluator.for_dataset(cfg.dataset, image_size(cfg))
        m["rfd"] = fd.fd(rec, reference=test)
    if counts.numel():
        m["codebook_usage"] = float((counts > 0).double().mean())
        m["perplexity"] = VectorQuantizer.perplexity(counts)
    return m, test, rec


def evaluate_after(cfg: TrainConfig, ae: Autoencoder, run_dir: Path, extra: dict) -> None:
    """metrics.json and reconstructions.png of a finished autoencoder run."""
    from .plots import save_image_grid

    metrics, test, rec = evaluate_autoencoder(cfg, ae)
    ckpt.write_json(run_dir / ckpt.METRICS, {**metrics, **extra})
    k = min(8, len(test))
    rows = [t for r in range(GRID_ROWS) for t in (test[r * k:(r + 1) * k], rec[r * k:(r + 1) * k])
            if len(t)]
    save_image_grid(torch.cat(rows), run_dir / "reconstructions.png", nrow=k)
