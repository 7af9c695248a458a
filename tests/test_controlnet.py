"""ControlNet (Weng, "ControlNet"; Zhang et al. 2023): the controlled model equals its base at
initialisation for any hint; one step moves the zero convolutions and never the base; hints are
validated in one line; the Sobel edges of a step edge are known in closed form; train-controlnet
→ sample from the command line with every sampler; resume is bit-exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main
from difflab.config import TrainConfig
from difflab.data import hints as hl
from difflab.errors import ConfigError
from difflab.nn.controlnet import ControlledUNet, ControlNet, control_branch, controlled
from difflab.nn.unet import UNet, UNetConfig
from difflab.runs import checkpoint as ckpt
from difflab.runs.controlnet import resume_controlnet, train_controlnet
from difflab.runs.load import load_run
from difflab.runs.train import train
from difflab.samplers import SAMPLERS
from difflab.schedules import linear
from difflab.training import fit
from difflab.training.controlnet import ControlNetObjective
from difflab.training.diffusion import LRSchedule

TINY_BASE = dict(dataset="digits", steps=8, batch=16, model_channels=8, num_res_blocks=1,
                 attention="", warmup=2, eval_sampler="ddim", eval_steps=4, n_eval=20,
                 checkpoint_every=10, T=100, threads=1, device="cpu")


def random_unet(**kw) -> UNet:
    """A small U-Net with random weights everywhere (a fresh one predicts 0: its output layer
    starts at zero), frozen."""
    cfg = dict(in_channels=1, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(2,), groups=4)
    torch.manual_seed(0)
    net = UNet(UNetConfig(**{**cfg, **kw}))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return net.requires_grad_(False).eval()


@pytest.mark.parametrize("kw", [{}, {"efficient": True, "num_classes": 3},
                                {"resblock_updown": True, "rescale_skip": True}],
                         ids=["adm", "efficient-class", "biggan-updown"])
def test_controlled_model_equals_its_base_exactly_at_init_for_any_hint(kw):
    base = random_unet(**kw)
    model = controlled(base, control_branch(base))
    assert isinstance(model, ControlledUNet)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([1, 10, 50, 99])
    cond = {"y": torch.tensor([0, 1, 2, 3])} if kw.get("num_classes") else {}
    want = base(x, t, **cond)
    assert want.abs().mean() > 0.01  # a base that does something
    for hint in (torch.rand(4, 1, 8, 8, generator=g), 100 * torch.randn(4, 1, 8, 8, generator=g),
                 torch.zeros(4, 1, 8, 8)):
        assert torch.equal(model(x, t, hint=hint, **cond), want)
    with pytest.raises(ConfigError, match="needs its hint"):
        model(x, t, **cond)


def test_the_branch_is_a_copy_of_the_base_encoder_with_zero_connections():
    base = random_unet()
    branch = ControlNet(base)
    for name, p in branch.copy.named_parameters():
        assert torch.equal(p, base.get_parameter(name)) and p.requires_grad
    assert not hasattr(branch.copy, "up") and not hasattr(branch.copy, "out")
    zeros = [*branch.zero_convs, branch.mid_zero, branch.hint_encoder.net[-1]]
    assert len(branch.zero_convs) == len(base.skip_channels)
    assert all(not p.any() for z in zeros for p in z.parameters())
    assert all(z.kernel_size == (1, 1) for z in [*branch.zero_convs, branch.mid_zero])
    random = ControlNet(base, zero=False)  # the ablation: ordinary initialisation
    assert all(random.mid_zero.weight.any() for _ in [0])


def tiny_objective(steps_data: int = 32):
    base = random_unet()
    g = torch.Generator().manual_seed(0)
    data = torch.rand(steps_data, 1, 8, 8, generator=g) * 2 - 1
    control = control_branch(base)
    obj = ControlNetObjective(base, control, linear(100), data, hl.edges(data), batch=8,
                              lr=LRSchedule(1e-3, 10), ema_decay=0.9)
    return base, control, obj


def test_one_step_moves_the_zero_convolutions_and_never_the_base():
    base, control, obj = tiny_objective()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    fit(obj, steps=1, generator=torch.Generator().manual_seed(0))
    for z in [*control.zero_convs, control.mid_zero]:
        assert z.weight.abs().sum() > 0, "the gradient reached the zero convolution"
    # the hint encoder's zero conv sits behind them: its gradient is 0 until they have moved
    assert not control.hint_encoder.net[-1].weight.any()
    fit(obj, steps=2, generator=torch.Generator().manual_seed(0))
    assert control.hint_encoder.net[-1].weight.abs().sum() > 0
    after = base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the base never changes"
    assert all(not p.requires_grad and p.grad is None for p in base.parameters())


def test_hint_shapes_are_checked_in_one_line():
    base = random_unet()
    model = controlled(base, control_branch(base))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 6])
    for bad in (torch.rand(2, 3, 8, 8), torch.rand(2, 1, 16, 16), torch.rand(3, 1, 8, 8),
                torch.rand(1, 8, 8), torch.ones(2, 1, 8, 8, dtype=torch.long)):
        with pytest.raises(ConfigError) as err:
            model(x, t, hint=bad)
        assert "\n" not in str(err.value) and "hint" in str(err.value)


# --- hints ------------------------------------------------------------------------------------
def step_image(column: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    x = torch.full((1, 1, 6, 8), low)
    x[..., column:] = high
    return x


def test_sobel_of_a_step_edge_is_known_in_closed_form():
    """A vertical step of height h at column k: g_x = h/2 (after /8) on columns k−1 and k, 0
    elsewhere (borders replicated), g_y = 0; so the magnitude is h/2 there, 1 for a full step."""
    for height, low in ((2.0, -1.0), (1.0, -0.5)):
        gx, gy = hl.sobel(step_image(4, low, low + height))
        want = torch.zeros(1, 1, 6, 8)
        want[..., 3:5] = height / 2
        assert torch.allclose(gx, want, atol=1e-6) and torch.equal(gy, torch.zeros_like(gy))
    falling = hl.sobel(step_image(4, 1.0, -1.0))[0]
    assert torch.allclose(falling[..., 3:5], torch.full((1, 1, 6, 2), -1.0))
    e = hl.edges(step_image(4))
    assert e[..., 3:5].all() and e.sum() == 12  # two columns of 6
    assert hl.edges(step_image(4, -0.3, 0.3)).sum() == 0  # below the threshold (0.3 < 0.5)
    thin = hl.edges(step_image(4), thinned=True)
    assert thin[..., 4].all() and thin.sum() == 6  # one pixel wide
    horizontal = hl.edges(step_image(4).transpose(-1, -2), thinned=True)  # (1, 1, 8, 6)
    assert horizontal[..., 4, :].all() and horizontal.sum() == 6
    assert hl.edges(torch.zeros(2, 3, 8, 8)).sum() == 0  # flat: no edges; RGB is averaged


def test_edge_f1_and_mask_iou():
    e = hl.edges(step_image(4))
    assert hl.edge_f1(e, e) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    shifted = hl.edges(step_image(6))  # columns 5, 6 against 3, 4
    assert hl.edge_f1(shifted, e)["f1"] == 0.0
    assert hl.edge_f1(shifted, e, tolerance=1)["recall"] == 0.5  # column 4 is next to 5
    assert hl.edge_f1(torch.zeros_like(e), torch.zeros_like(e))["f1"] == 1.0
    m = hl.mask_hint(step_image(4))
    assert m.sum() == 24 and hl.mask_iou(m, m) == 1.0
    assert hl.mask_iou(m, hl.mask_hint(step_image(6))) == 0.5


def write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def test_folder_control_images(tmp_path):
    root = tmp_path / "imgs"
    for name in ("a.png", "sub/b.png"):
        write_png(root / name, np.full((8, 8), 200))
        write_png(root / ".controls" / name, np.eye(8) * 255)
    (root / hl.CONTROLS_FILE).write_text("file,control\na.png,.controls/a.png\n"
                                        "sub/b.png,.controls/sub/b.png\n")
    x = hl.control_images(root, ["a.png", "sub/b.png"], (8, 8))
    assert x.shape == (2, 1, 8, 8) and torch.equal(x[0, 0], torch.eye(8))
    with pytest.raises(ConfigError, match="no row"):
        hl.control_images(root, ["c.png"], (8, 8))
    with pytest.raises(ConfigError, match="16×16"):
        hl.control_images(root, ["a.png"], (16, 16))
    (root / hl.CONTROLS_FILE).write_text("file,control\na.png,sub/b.png\nsub/b.png,a.png\n")
    with pytest.raises(ConfigError, match="training images"):
        hl.control_images(root, ["a.png", "sub/b.png"], (8, 8))


# --- runs and the command line --------------------------------------------------------------
@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    cfg = TrainConfig.from_dict(TINY_BASE)
    return train(cfg, tmp_path_factory.mktemp("cn") / "base", progress=False,
                 evaluate_after=False)


@pytest.fixture(scope="module")
def cn_run(base_run) -> Path:
    out = base_run.with_name("cn")
    assert main(["train-controlnet", base_run, "--steps", "3", "--batch", "16", "--no-progress",
                 "--threads", "1", "--device", "cpu", "--out", out]) == 0
    return out


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_controlnet_writes_a_self_contained_run(cn_run, base_run):
    meta = json.loads((cn_run / ckpt.CONFIG).read_text())
    assert meta["kind"] == "controlnet" and set(meta["components"]) == {"control"}
    assert meta["job"]["hint"] == "edges" and meta["job"]["control"]["zero"] is True
    for name in ("control.safetensors", "control.ema.safetensors", "checkpoint.safetensors",
                 "samples.png", "base/config.json", "base/denoiser.ema.safetensors"):
        assert (cn_run / name).is_file(), name
    assert (cn_run / "base/denoiser.ema.safetensors").read_bytes() == (
        base_run / "denoiser.ema.safetensors").read_bytes()
    metrics = json.loads((cn_run / ckpt.METRICS).read_text())
    assert 0 <= metrics["edge_f1"] <= 1 and metrics["fd"] > 0 and metrics["train_steps"] == 3
    cfg, model, _ = load_run(cn_run)
    assert isinstance(model, ControlledUNet) and not model.training
    _, base, _ = load_run(base_run)
    x, t, h = torch.randn(3, 1, 8, 8), torch.tensor([3, 30, 90]), torch.rand(3, 1, 8, 8)
    model.conditioning_scale = 0.0
    assert torch.equal(model(x, t, hint=h), base(x, t))  # scale 0: the base alone


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "consistency"])
def test_sample_a_controlnet_run_with_every_sampler(cn_run, tmp_path, capsys, sampler):
    out = tmp_path / "s.npy"
    code, stdout, err = run(capsys, "sample", cn_run, "--hint-from-data", "3", "--sampler",
                            sampler, "--steps", "3", "--control-scale", "0.7", "--out", out)
    assert code == 0, err
    x = np.load(out)
    assert x.shape == (3, 1, 8, 8) and np.isfinite(x).all()


def test_sample_from_a_hint_file_and_bad_hints_are_one_line(cn_run, base_run, tmp_path,
                                                            capsys):
    good = write_png(tmp_path / "h.png", np.eye(8) * 255)
    code, _, err = run(capsys, "sample", cn_run, "--hint", good, "-n", "2", "--steps", "2",
                       "--out", tmp_path / "a.npy")
    assert code == 0, err
    np.save(tmp_path / "h.npy", np.random.default_rng(0).random((3, 1, 8, 8)))
    assert run(capsys, "sample", cn_run, "--hint", tmp_path / "h.npy", "--steps", "2", "-n",
               "4", "--out", tmp_path / "b.npy")[0] == 0
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 8, 8)))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    bad = {
        "missing file": ["--hint", tmp_path / "none.png"],
        "wrong size": ["--hint", write_png(tmp_path / "big.png", np.zeros((16, 16)))],
        "colour for grey": ["--hint", write_png(tmp_path / "rgb.png",
                                                np.stack([np.eye(8) * 255, np.zeros((8, 8)),
                                                          np.zeros((8, 8))], -1))],
        "wrong channels npy": ["--hint", tmp_path / "bad.npy"],
        "unreadable": ["--hint", tmp_path / "junk.png"],
        "both": ["--hint", good, "--hint-from-data", "2"],
        "neither": [],
        "too many held-out": ["--hint-from-data", "100000"],
    }
    for what, flags in bad.items():
        code, out, err = run(capsys, "sample", cn_run, *flags, "--out", tmp_path / "c.npy")
        assert code == 2 and err.count("\n") == 1 and err.startswith("difflab: error: "), what
    code, _, err = run(capsys, "sample", base_run, "--hint", good, "--out", tmp_path / "d.npy")
    assert code == 2 and "ControlNet" in err
    code, _, err = run(capsys, "eval", cn_run, "-n", "4", "--steps", "2")  # no hint flags
    assert code == 2 and err.count("\n") == 1 and "hint" in err


def test_bad_bases_and_flags_are_one_line(base_run, tmp_path, capsys):
    for flags in (["--hint", "file"], ["--steps", "0"], ["--p-uncond", "2"]):
        code, _, err = run(capsys, "train-controlnet", base_run, *flags, "--out", tmp_path / "x")
        assert code == 2 and err.count("\n") == 1, flags
    code, _, err = run(capsys, "train-controlnet", tmp_path / "nothing", "--out", tmp_path / "y")
    assert code == 2 and err.count("\n") == 1
    code, _, err = run(capsys, "train-controlnet", "--resume", base_run)
    assert code == 2 and "not a ControlNet" in err


def test_resume_is_bit_exact(base_run, tmp_path):
    kw = dict(steps=6, batch=8, checkpoint_every=2, device="cpu", threads=1, evaluate=False)
    whole = train_controlnet(base_run, tmp_path / "whole", **kw)
    part = train_controlnet(base_run, tmp_path / "part", max_steps=3, **kw)
    assert ckpt.load_checkpoint(part).step == 3 and not (part / ckpt.METRICS).is_file()
    resume_controlnet(part)
    for name in ("control.safetensors", "control.ema.safetensors"):
        a, b = ckpt.load_tensors(whole / name)[0], ckpt.load_tensors(part / name)[0]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (whole / ckpt.LOSS_CSV).read_text() == (part / ckpt.LOSS_CSV).read_text()


def test_class_conditional_base_drops_labels_and_samples_with_guidance(tmp_path, capsys):
    cfg = TrainConfig.from_dict({**TINY_BASE, "cond": "class", "eval_guidance": 1.0})
    base = train(cfg, tmp_path / "base", progress=False, evaluate_after=False)
    out = train_controlnet(base, tmp_path / "cn", hint="mask", steps=2, batch=16, device="cpu",
                           threads=1, evaluate=False)
    job = json.loads((out / ckpt.CONFIG).read_text())["job"]
    assert job["p_uncond"] == 0.5
    code, _, err = run(capsys, "sample", out, "--hint-from-data", "4", "--class", "3",
                       "--guidance", "2", "--steps", "2", "--out", tmp_path / "s.png")
    assert code == 0, err


def test_the_objective_drops_the_base_condition_half_of_the_time():
    from difflab.build.conditioning import TrainConditions

    base, control, _ = tiny_objective()
    data = torch.zeros(10, 1, 8, 8)
    conds = TrainConditions({"y": torch.arange(3)}, torch.arange(10)[:, None] % 3,
                            {"y": torch.tensor([3])})
    obj = ControlNetObjective(base, control, linear(100), data, hl.edges(data), batch=4000,
                              lr=LRSchedule(1e-3, 10), ema_decay=0.9, conds=conds)
    batch = obj.draw(0, torch.Generator().manual_seed(0))
    dropped = (batch["y"] == 3).double().mean().item()
    assert abs(dropped - 0.5) < 4 * (0.25 / 4000) ** 0.5  # within 4 standard errors
    assert batch["hint"].shape == (4000, 1, 8, 8)


def test_train_resume_refuses_a_controlnet_run_and_leaves_it_intact(cn_run, capsys):
    before = (cn_run / ckpt.CONFIG).read_bytes()
    code, _, err = run(capsys, "train", "--resume", cn_run)
    assert code == 2 and err.count("\n") == 1 and "controlnet run" in err
    assert (cn_run / ckpt.CONFIG).read_bytes() == before


def test_a_folder_base_trains_on_its_own_control_images(tmp_path, capsys):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    rows = ["file,control"]
    for i in range(12):
        img = np.zeros((8, 8))
        img[2:6, i % 4:i % 4 + 3] = 255
        write_png(root / f"{i}.png", img)
        write_png(root / ".controls" / f"{i}.png", (img > 0) * 255 * rng.integers(0, 2))
        rows.append(f"{i}.png,.controls/{i}.png")
    (root / hl.CONTROLS_FILE).write_text("\n".join(rows) + "\n")
    cfg = TrainConfig.from_dict({**TINY_BASE, "dataset": "folder", "data": str(root),
                                 "image_size": 8})
    base = train(cfg, tmp_path / "base", progress=False, evaluate_after=False)
    out = tmp_path / "cn"
    code, stdout, err = run(capsys, "train-controlnet", base, "--hint", "file", "--steps", "2",
                            "--batch", "4", "--device", "cpu", "--out", out)
    assert code == 0, err
    assert json.loads((out / ckpt.METRICS).read_text())["n_eval"] >= 1
    code, _, err = run(capsys, "sample", out, "--hint-from-data", "1", "--steps", "2",
                       "--out", tmp_path / "s.npy")
    assert code == 0, err
    (root / hl.CONTROLS_FILE).write_text("file,control\n")  # no rows: one line
    code, _, err = run(capsys, "train-controlnet", base, "--hint", "file", "--out",
                       tmp_path / "cn2")
    assert code == 2 and err.count("\n") == 1 and "no row" in err


def test_bases_that_cannot_be_controlled_are_refused_by_name():
    import dataclasses

    from difflab.runs.controlnet_model import check_base

    cfg = TrainConfig.from_dict({**TINY_BASE})
    for kind, changes, words in (("progressive", {}, "progressive run"),
                                 ("diffusion", {"variance": "learned"}, "variance")):
        with pytest.raises(ConfigError, match=words):
            check_base("r", kind, dataclasses.replace(cfg, **changes))
    check_base("r", "diffusion", cfg)


# --- beyond the paper: a DiT base ------------------------------------------------------------
def random_dit(block: str = "adaln-zero", **kw):
    from difflab.nn.dit import DiT, DiTConfig

    torch.manual_seed(0)
    net = DiT(DiTConfig.named("T", in_channels=1, input_size=(8, 8), patch_size=2, block=block,
                              **kw))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return net.requires_grad_(False).eval()


@pytest.mark.parametrize("block", ["adaln-zero", "adaln", "cross-attention"])
def test_a_controlled_dit_equals_its_base_at_init_and_its_zero_layers_train(block):
    from difflab.nn.controlnet import ControlledDiT

    kw = {"context_dim": 6} if block == "cross-attention" else {"num_classes": 3}
    base = random_dit(block, **kw)
    model = controlled(base, control_branch(base))
    assert isinstance(model, ControlledDiT) and len(model.control.blocks) == 2  # half of 4
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 5, 50, 99])
    cond = ({"context": torch.randn(4, 3, 6)} if block == "cross-attention"
            else {"y": torch.tensor([0, 1, 2, 3])})
    assert torch.equal(model(x, t, hint=torch.rand(4, 1, 8, 8), **cond), base(x, t, **cond))
    with pytest.raises(ConfigError, match="hint"):
        model(x, t, hint=torch.rand(4, 1, 4, 4), **cond)
    if block != "adaln-zero":
        return
    data = torch.rand(16, 1, 8, 8) * 2 - 1
    control = model.control
    before = {k: v.clone() for k, v in base.state_dict().items()}
    obj = ControlNetObjective(base, control, linear(100), data, hl.edges(data), batch=8,
                              lr=LRSchedule(1e-3, 10), ema_decay=0.9, conds=None)
    obj.draw = lambda step, g, draw=obj.draw: {**draw(step, g),
                                               "y": torch.randint(0, 3, (8,), generator=g)}
    fit(obj, steps=2, generator=torch.Generator().manual_seed(0))
    assert all(z.weight.abs().sum() > 0 for z in control.zero_linears)
    assert control.hint_encoder.net[-1].weight.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_in_context_dit_has_no_controlnet():
    base = random_dit("in-context", num_classes=3)
    with pytest.raises(ConfigError, match="in-context"):
        control_branch(base)


def test_train_controlnet_on_a_dit_run(tmp_path, capsys):
    cfg = TrainConfig.from_dict({**TINY_BASE, "model": "dit", "dit_size": "T", "patch_size": 2})
    base = train(cfg, tmp_path / "base", progress=False, evaluate_after=False)
    out = train_controlnet(base, tmp_path / "cn", steps=2, batch=8, device="cpu", threads=1)
    assert "edge_f1" in json.loads((out / ckpt.METRICS).read_text())
    code, _, err = run(capsys, "sample", out, "--hint-from-data", "2", "--sampler", "dpm++",
                       "--steps", "3", "--out", tmp_path / "s.npy")
    assert code == 0, err


def test_a_shapes_base_takes_mask_hints(tmp_path, capsys):
    """The shapes scenes' silhouettes as hints: the mask of an RGB scene is where any colour is
    lit, exactly the shapes' pixels; a ControlNet on a shapes base trains and samples from it."""
    from difflab.data import shapes

    data = shapes.shapes("test", size=32)
    masks = hl.mask_hint(data.x[:8])  # (8, 1, 32, 32)
    assert masks.shape == (8, 1, 32, 32)
    lit = (data.x[:8] > -1 + 1e-6).any(dim=1, keepdim=True).float()
    assert (masks <= lit).all() and masks.sum() > 0.5 * lit.sum()  # the shapes, not the black
    cfg = TrainConfig.from_dict({**TINY_BASE, "dataset": "shapes", "image_size": 32,
                                 "steps": 2, "n_eval": 4})
    base = train(cfg, tmp_path / "base", progress=False, evaluate_after=False)
    out = tmp_path / "cn"
    code, _, err = run(capsys, "train-controlnet", base, "--hint", "mask", "--steps", "2",
                       "--batch", "4", "--device", "cpu", "--out", out)
    assert code == 0, err
    assert "mask_iou" in json.loads((out / ckpt.METRICS).read_text())
    code, _, err = run(capsys, "sample", out, "--hint-from-data", "2", "--steps", "2",
                       "--out", tmp_path / "s.npy")
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (2, 3, 32, 32)
