"""unCLIP runs (Weng eq. 34): a prior run (kind ``unclip-prior``) and a decoder run (kind
``unclip-decoder``), each holding the CLIP run it was trained with in ``clip/``; loading them
into a :class:`difflab.pipelines.unclip.Unclip`, encoding captions for it, and what a finished
prior or decoder run writes to metrics.json:

- prior: on the first ``n_eval`` test captions, ``prior_cos_true`` the mean cosine similarity of
  a sampled c_i to the true c_i of the caption's image, against ``prior_cos_random`` (true c_i
  of random pairs of test images) and ``prior_cos_text`` / ``true_cos_text`` (sampled and true
  c_i against the caption's c_t);
- decoder: the test images' own c_i and captions decoded (``eval_guidance`` w, ``eval_steps``
  DDIM steps): FD to the test split, and the prompt accuracy (shapes) or class accuracy
  (digits, MNIST) of the decodings, and ``decoder_cos`` the cosine similarity of each
  decoding's c_i to the c_i it was decoded from (``random_cos``: random pairs of test images).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..build.data import image_shape, image_split
from ..build.model import build_schedule
from ..build.unclip import image_embeddings, text_embeddings
from ..config import TrainConfig, spacing_for
from ..data import captions as cap
from ..errors import ConfigError
from ..nn.text_encoder import load_text_encoder
from ..pipelines.unclip import Captions, Unclip, cosine
from ..schedules import Schedule
from . import checkpoint as ckpt
from .clip import CLIP_DIR, load_clip
from .load import load_network, read_run, sampling_model


def load_stage(run_dir: str | Path, kind: str, device: str | None = None
               ) -> tuple[TrainConfig, nn.Module, Schedule]:
    """(config, EMA network in eval mode, schedule) of a prior or decoder run; a decoder that
    predicts v or x_0 comes as its ε-model (``runs.load.sampling_model``)."""
    found, cfg, _ = read_run(run_dir)
    if found != kind:
        raise ConfigError(f"{run_dir} is a {found} run, not an {kind} run")
    component = "prior" if kind == "unclip-prior" else "decoder"
    net = load_network(run_dir, cfg, "ema", component).eval().requires_grad_(False)
    if device is not None:
        from ..training.backend import resolve_device

        net.to(resolve_device(device))
    schedule = build_schedule(cfg)
    return cfg, sampling_model(cfg, net, schedule), schedule


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def load_unclip(decoder_run: str | Path, prior_run: str | Path | None = None,
                device: str | None = None, **settings) -> tuple[TrainConfig, Unclip]:
    """The decoder run's config and the :class:`Unclip` of a decoder run (and a prior run,
    which must use the same CLIP); ``settings``: steps, guidance weights and thresholding of
    Unclip (the decoder's DDIM spacing is the run's: "leading" on a cosine schedule)."""
    cfg, decoder, d_schedule = load_stage(decoder_run, "unclip-decoder", device)
    clip = load_clip(Path(decoder_run) / CLIP_DIR, device)[1]
    prior, p_schedule = None, None
    if prior_run is not None:
        _, prior, p_schedule = load_stage(prior_run, "unclip-prior", device)
        if not same_weights(clip, load_clip(Path(prior_run) / CLIP_DIR)[1]):
            raise ConfigError(f"{prior_run} and {decoder_run} were trained with different CLIP "
                              "runs; train both with the same --clip")
    settings.setdefault("decoder_spacing", spacing_for(cfg, "ddim") or "linspace")
    return cfg, Unclip(clip, prior, p_schedule, decoder, d_schedule, image_shape(cfg),
                       **settings)


def captions_for(unclip: Unclip, captions: list[str], text_tokens: int) -> Captions:
    """MiniLM tokens and CLIP text embeddings of captions."""
    enc = load_text_encoder().encode(list(captions), max_length=text_tokens)
    return Captions(enc.tokens, enc.mask, text_embeddings(unclip.clip, enc.tokens, enc.mask))


def test_captions(cfg: TrainConfig, n: int) -> tuple[Tensor, list[str], Tensor, Tensor | None]:
    """The first n test images, their captions, labels and (shapes) attributes."""
    test = image_split(cfg, "test")
    n = min(n, len(test))
    if cfg.dataset == "shapes":
        caps = list(test.captions[:n])
    else:
        caps = cap.digit_captions(test.y[:n], seed=cfg.seed)
    att = test.attributes[:n] if test.attributes is not None else None
    return test.x[:n], caps, test.y[:n], att


def random_pairs_cos(emb: Tensor, seed: int = 0) -> float:
    """Mean cosine similarity of random pairs of distinct rows (N, D)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(emb), generator=g)
    other = torch.roll(perm, 1)
    return float(cosine(emb[perm], emb[other]).mean())


@torch.no_grad()
def evaluate_prior(cfg: TrainConfig, prior: nn.Module, clip: nn.Module, schedule: Schedule,
                   n: int) -> dict[str, float]:
    x, caps, _, _ = test_captions(cfg, n)
    true = image_embeddings(clip, x)  # (n, D)
    enc = load_text_encoder().encode(caps, max_length=cfg.text_tokens)
    c_t = text_embeddings(clip, enc.tokens, enc.mask)
    u = Unclip(clip, prior, schedule, prior, schedule, image_shape(cfg),
               prior_steps=cfg.eval_steps, prior_guidance=cfg.eval_guidance)
    g = torch.Generator().manual_seed(cfg.seed)
    sampled = u.sample_prior(Captions(enc.tokens, enc.mask, c_t), g).cpu()
    return {"prior_cos_true": float(cosine(sampled, true).mean()),
            "prior_cos_random": random_pairs_cos(true, cfg.seed),
            "prior_cos_text": float(cosine(sampled, c_t).mean()),
            "true_cos_text": float(cosine(true, c_t).mean()), "n_test": len(caps)}


@torch.no_grad()
def evaluate_decoder(cfg: TrainConfig, decoder: nn.Module, clip: nn.Module, schedule: Schedule,
                     n: int) -> tuple[dict[str, float], Tensor]:
    from ..data.fd import DEFAULT_SIZE, FDEvaluator

    x, caps, y, att = test_captions(cfg, n)
    u = Unclip(clip, None, None, decoder, schedule, image_shape(cfg),
               decoder_steps=cfg.eval_steps, decoder_guidance=cfg.eval_guidance,
               decoder_spacing=spacing_for(cfg, "ddim") or "linspace")
    y_caps = captions_for(u, caps, cfg.text_tokens)
    c_i = image_embeddings(clip, x)
    g = torch.Generator().manual_seed(cfg.seed)
    out = torch.cat([u.decode(c_i[s:s + 100], Captions(*(v[s:s + 100] for v in (
        y_caps.tokens, y_caps.mask, y_caps.text_emb))), g).cpu() for s in range(0, len(x), 100)])
    m = {"decoder_cos": float(cosine(image_embeddings(clip, out), c_i).mean()),
         "random_cos": random_pairs_cos(c_i, cfg.seed), "n_test": len(x),
         "guidance": cfg.eval_guidance, "steps": cfg.eval_steps}
    if cfg.dataset in DEFAULT_SIZE:
        fd = FDEvaluator.for_dataset(cfg.dataset, x.shape[-1])
        m["fd"] = fd.fd(out, reference=x)
        if cfg.dataset == "shapes":
            from ..data.shapes_eval import prompt_accuracy

            m["prompt_accuracy"] = prompt_accuracy(out, att, fd.classifier)["all"]
        else:
            m["accuracy"] = fd.accuracy(out, y)
    return m, out


def evaluate_after(cfg: TrainConfig, kind: str, net: nn.Module, clip: nn.Module,
                   schedule: Schedule, run_dir: Path, extra: dict) -> None:
    """metrics.json (and for a decoder samples.png: test images above their decodings)."""
    n = min(cfg.n_eval, 200)
    if kind == "unclip-prior":
        metrics = evaluate_prior(cfg, net, clip, schedule, n)
    else:
        metrics, out = evaluate_decoder(cfg, net, clip, schedule, n)
        from .plots import save_image_grid

        x = test_captions(cfg, 8)[0]
        save_image_grid(torch.cat([x, out[:len(x)]]), run_dir / "samples.png", nrow=len(x))
    ckpt.write_json(run_dir / ckpt.METRICS, {**metrics, **extra})


def test_image(cfg: TrainConfig, index: int) -> tuple[Tensor, str]:
    """Test image ``index`` (1, C, H, W) of the run's data and its caption."""
    x, caps, _, _ = test_captions(cfg, 10**9)
    if not 0 <= index < len(x):
        raise ConfigError(f"test image index {index} is out of range 0..{len(x) - 1}")
    return x[index:index + 1], caps[index]


def unclip_images(cfg: TrainConfig, unclip: Unclip, *, n: int,
                  generator: torch.Generator | None = None, prompt: str | None = None,
                  variations: int | None = None, interpolate: tuple[int, int] | None = None,
                  text_diff: int | None = None, to: str | None = None,
                  max_weight: float = 0.5, best_of: int = 1) -> Tensor:
    """What ``difflab unclip`` draws, (m, C, H, W) on the CPU: n images of a prompt; a test
    image followed by n variations; n interpolations between two test images; a test image
    followed by n text diffs towards ``to`` (from its own caption)."""
    if prompt is not None:
        if not prompt.strip():
            raise ConfigError("empty prompt")
        y = captions_for(unclip, [prompt] * n, cfg.text_tokens)
        return unclip.text_to_image(y, generator, best_of).cpu()
    if variations is not None:
        x, _ = test_image(cfg, variations)
        return torch.cat([x, unclip.variations(x, n, generator).cpu()])
    if interpolate is not None:
        (x_a, _), (x_b, _) = test_image(cfg, interpolate[0]), test_image(cfg, interpolate[1])
        return unclip.interpolate(x_a, x_b, n, generator).cpu()
    if text_diff is not None and to is not None:
        x, own = test_image(cfg, text_diff)
        if not to.strip():
            raise ConfigError("empty --to caption")
        c = captions_for(unclip, [own, to], cfg.text_tokens).text_emb  # (2, D)
        return torch.cat([x, unclip.text_diffs(x, c[:1], c[1:], n, max_weight,
                                               generator=generator).cpu()])
    raise ConfigError("say what to draw: a prompt, variations, an interpolation or a text diff")
