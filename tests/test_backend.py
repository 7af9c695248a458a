"""Devices, precision, compilation and gradient accumulation of the one training loop
(``training/backend.py``), as far as a CPU-only machine can exercise them; the CUDA tests at the
end run wherever a GPU is present (``benchmarks/gpu_check.sh`` runs them with a timing)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from difflab.config import TrainConfig
from difflab.runs import checkpoint as ckpt
from difflab.runs.draw import draw
from difflab.runs.load import load_run
from difflab.runs.train import train
from difflab.training.backend import Backend, BackendError, resolve_device

CUDA = torch.cuda.is_available()


def tiny(**kw) -> TrainConfig:
    base = dict(hidden=32, depth=1, t_dim=16, n_train=2000, steps=30, batch=64,
                checkpoint_every=10, n_eval=200, warmup=2, threads=1, device="cpu")
    return TrainConfig.from_dict({**base, **kw})


def weights(run, which="denoiser.ema.safetensors"):
    return ckpt.load_tensors(run / which)[0]


def test_devices_resolve_or_fail_in_one_line(tmp_path):
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(BackendError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not CUDA:
        with pytest.raises(BackendError, match="no CUDA device"):
            resolve_device("cuda")
        with pytest.raises(BackendError, match="no CUDA device"):
            load_run(train(tiny(steps=2), tmp_path / "run", progress=False,
                           evaluate_after=False), device="cuda")


def test_fp16_needs_cuda_and_unknown_precisions_are_refused():
    if not CUDA:
        with pytest.raises(BackendError, match="fp16 needs a CUDA device"):
            Backend.create("cpu", "fp16")
    with pytest.raises(ValueError, match="precision"):
        tiny(precision="fp8")


def test_shards_partition_the_global_batch():
    b = Backend(torch.device("cpu"), world_size=2)
    rows = []
    for rank in (0, 1):
        b.rank = rank
        for micro in (0, 1):
            s = b.shard(16, micro, 2)
            rows.extend(range(16)[s])
            assert s.stop - s.start == 4
    assert sorted(rows) == list(range(16))
    with pytest.raises(BackendError, match="must divide"):
        b.shard(10, 0, 4)


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    one = train(tiny(), tmp_path / "one", progress=False, evaluate_after=False)
    acc = train(tiny(grad_accum=4), tmp_path / "acc", progress=False, evaluate_after=False)
    a, b = weights(one), weights(acc)
    for k in a:  # same examples and noise, the mean over 4 slices: float rounding only
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_trains_close_to_fp32(tmp_path):
    full = train(tiny(steps=60), tmp_path / "fp32", progress=False, evaluate_after=False)
    half = train(tiny(steps=60, precision="bf16"), tmp_path / "bf16", progress=False,
                 evaluate_after=False)
    a, b = weights(full), weights(half)
    assert all(v.dtype == torch.float32 for v in b.values())  # master weights stay fp32
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    size = max(a[k].abs().max().item() for k in a)
    assert 0 < diff < 0.1 * size  # bf16 rounds the activations, but trains the same model
    la = [float(x.split(",")[1]) for x in (full / "loss.csv").read_text().split()[1:]]
    lb = [float(x.split(",")[1]) for x in (half / "loss.csv").read_text().split()[1:]]
    assert abs(la[-1] - lb[-1]) < 0.1 * la[-1]


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    pytest.importorskip("torch._dynamo")
    eager = train(tiny(steps=6), tmp_path / "eager", progress=False, evaluate_after=False)
    try:
        comp = train(tiny(steps=6, compile=True), tmp_path / "comp", progress=False,
                     evaluate_after=False)
    except Exception as err:  # no C compiler for inductor on this machine
        pytest.skip(f"torch.compile is unavailable here: {err}")
    a, b = weights(eager), weights(comp)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_sampling_draws_x_T_on_the_cpu_whatever_the_device(tmp_path):
    run = train(tiny(steps=4), tmp_path / "run", progress=False, evaluate_after=False)
    _, model, schedule = load_run(run, device="cpu")
    x1 = draw(model, schedule, (50, 2), sampler="ddim", steps=5, seed=3)[0]
    x2 = draw(model, schedule, (50, 2), sampler="ddim", steps=5, seed=3)[0]
    assert x1.device.type == "cpu" and torch.equal(x1, x2)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_and_sampling(tmp_path, precision):
    cpu = train(tiny(steps=40), tmp_path / "cpu", progress=False)
    gpu = train(dataclasses.replace(tiny(steps=40), device="cuda", precision=precision),
                tmp_path / precision, progress=False)
    a, b = weights(cpu), weights(gpu)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < (1e-3 if precision == "fp32" else 0.1)  # same draws, other kernels
    _, model, schedule = load_run(gpu, device="cuda")
    x = draw(model, schedule, (100, 2), sampler="heun", steps=10)[0]
    assert x.device.type == "cpu" and torch.isfinite(x).all()


def test_ranks_above_zero_draw_their_own_dropout_stream():
    from difflab.training.loop import rank_seed

    seeds = {rank_seed(0, step, rank) for step in range(50) for rank in range(1, 5)}
    assert len(seeds) == 200  # a stream per (step, rank), none repeated
    assert rank_seed(1, 0, 1) != rank_seed(0, 0, 1)
