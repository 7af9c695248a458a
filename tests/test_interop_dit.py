"""difflab's DiT as diffusers' DiTTransformer2DModel (difflab.interop.dit_map): exact for a DiT
trained with ``dit_time_features = "diffusers"``, refused in one line otherwise."""

from __future__ import annotations

import pytest
import torch

import difflab
from difflab.config import TrainConfig
from difflab.errors import ConfigError, InteropError
from difflab.guidance import Bound, ClassifierFree
from difflab.interop.dit_map import check_dit, dit_transformer
from difflab.nn.dit import DiT, DiTConfig
from difflab.nn.embedding import diffusers_timestep_embedding
from helpers import run_cli
from interop_helpers import make_run, randomise

TINY = dict(in_channels=2, input_size=8, depth=2, width=32, heads=4, time_features="diffusers")


def test_diffusers_time_features_are_diffusers_own():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = torch.tensor([1, 2, 3, 250, 999, 1000])
    theirs = embeddings.get_timestep_embedding(t - 1, 256, flip_sin_to_cos=True,
                                               downscale_freq_shift=1)
    assert torch.equal(diffusers_timestep_embedding(t, 256), theirs)  # to the bit


@pytest.mark.parametrize("fields", [dict(num_classes=3),
                                    dict(learn_sigma=True, patch_size=4)])
def test_exported_dit_is_the_same_function(fields):
    diffusers = pytest.importorskip("diffusers")
    net = randomise(DiT(DiTConfig(**TINY, **fields)), scale=0.2).eval()
    twin = dit_transformer(diffusers, net)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 2, 8, 8, generator=g), torch.tensor([1, 9, 500, 1000])
    y = torch.tensor([0, 1, 2, 3]) if net.config.num_classes else None  # 3: ∅
    with torch.no_grad():
        ours = net(x, t, y=y)
        labels = y if y is not None else torch.zeros(4, dtype=torch.long)  # unconditional: any
        theirs = twin(x, timestep=t - 1, class_labels=labels).sample
    assert ours.abs().mean() > 0.1
    assert torch.allclose(ours, theirs, atol=1e-5 * ours.abs().max().item(), rtol=0)


@pytest.mark.parametrize("fields, reason", [
    (dict(time_features="difflab"), "dit_time_features"),
    (dict(block="adaln"), "adaLN-Zero only"),
    (dict(context_dim=8), "cross-attention"),
    (dict(input_size=(8, 4)), "not square"),
    (dict(mlp_ratio=2.0), "MLP ratio"),
])
def test_unmappable_dits_are_refused_in_one_line(fields, reason):
    with pytest.raises(InteropError, match=reason) as err:
        check_dit(DiTConfig(**{**TINY, **fields}))
    assert "\n" not in str(err.value)


def test_dit_time_features_is_checked():
    with pytest.raises(ConfigError, match="dit_time_features"):
        TrainConfig.from_dict(dict(dit_time_features="fourier"))


def test_exported_dit_run_samples_like_difflab_in_a_diffusers_ddim_loop(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    run, out = tmp_path / "run", tmp_path / "export"
    make_run(run, model="dit", dit_size="T", dit_time_features="diffusers", cond="class",
             num_classes=10, T=100, seed=4)
    code, stdout, err = run_cli(capsys, "export", run, "--format", "diffusers", out)
    assert code == 0 and "DiTTransformer2DModel" in stdout, err
    assert {p.name for p in out.iterdir()} == {"transformer", "scheduler"}
    transformer = diffusers.DiTTransformer2DModel.from_pretrained(out, subfolder="transformer")
    scheduler = diffusers.DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    y = torch.tensor([0, 3, 7, 10])  # 10 = the null label ∅
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    scheduler.set_timesteps(8)
    x = x_T
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = transformer(x, timestep=t.expand(4), class_labels=y).sample
            x = scheduler.step(eps, t, x).prev_sample
    _, model, schedule = difflab.load_run(run)
    ours = difflab.samplers.ddim(Bound(model, y=y), schedule, x_T, steps=8, spacing="leading")
    assert ours.abs().mean() > 0.1
    assert torch.allclose(x, ours, atol=1e-4 * ours.abs().max().item(), rtol=0)
    # and back: load_diffusers reads the DiT folder as a difflab model on the same schedule
    loaded, loaded_schedule = difflab.load_diffusers(out)
    assert loaded.num_classes == 10 and torch.equal(loaded_schedule.betas, schedule.betas)
    back = difflab.samplers.ddim(Bound(ClassifierFree(loaded, w=1.5, null_cond={"y": 10}), y=y),
                                 loaded_schedule, x_T, steps=8)
    ref = difflab.samplers.ddim(Bound(ClassifierFree(model, w=1.5, null_cond={"y": 10}), y=y),
                                schedule, x_T, steps=8)
    assert torch.allclose(back, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)


@pytest.mark.parametrize("preset", ["digits-dit", "mnist-dit"])
def test_dit_presets_export_when_trained_with_diffusers_time_features(preset):
    from difflab.build.model import build_model
    from difflab.config import load_config
    from difflab.interop.dit_map import dit_problems

    as_is = build_model(load_config(preset)).config
    assert len(dit_problems(as_is)) == 1 and "dit_time_features" in dit_problems(as_is)[0]
    assert dit_problems(build_model(load_config(
        preset, {"dit_time_features": "diffusers"})).config) == []
