"""Hostile or broken files (issue 18): safetensors files with a corrupt, oversized or lying
header or cut short, config.json files with wrong types or unknown keys, pickles dropped into a
run directory, and image files that are damaged, not images, decompression bombs or in odd
modes. Each is one line of error (a :class:`~difflab.errors.DifflabError`) or a skipped and
counted file; never a traceback, never code run. Fuzzed with hypothesis (few examples: seconds).
"""

from __future__ import annotations

import ast
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from difflab.config import TrainConfig
from difflab.errors import DifflabError
from difflab.runs import checkpoint as ckpt
from difflab.runs.load import load_run, read_run
from difflab.runs.train import train
from helpers import one_error_line, run_cli

SRC = Path(__file__).resolve().parents[1] / "src" / "difflab"
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny finished run (its files are copied before a test breaks them)."""
    cfg = TrainConfig.from_dict({"hidden": 16, "depth": 1, "t_dim": 8, "batch": 64,
                                 "n_train": 256, "steps": 4, "checkpoint_every": 2,
                                 "threads": 1})
    return train(cfg, tmp_path_factory.mktemp("hostile") / "run", progress=False,
                 evaluate_after=False)


def framed(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


# --- safetensors -------------------------------------------------------------------------------
@pytest.mark.parametrize("blob, problem", [
    (b"", "shorter than a safetensors header"),
    (b"\x01\x02", "shorter than a safetensors header"),
    (struct.pack("<Q", 2**63) + b"{}", "more than the 100000000 allowed"),
    (struct.pack("<Q", 50_000_000) + b"{}", "truncated"),
    (framed(b"{not json"), "corrupt"),
    (framed(b"[1, 2]"), "corrupt"),
    (framed(b'{"__metadata__": {"step": 3}}'), "metadata"),
    (framed(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 8),
     "corrupt"),
    (framed(b'{"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
     "corrupt"),
    (framed(b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', b"\0" * 4),
     "corrupt"),
    (framed(b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}', b"\0" * 4),
     "corrupt"),
])
def test_broken_safetensors_are_one_line_errors(tmp_path, blob, problem):
    path = tmp_path / "x.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ckpt.CheckpointError, match=problem) as err:
        ckpt.load_tensors(path)
    assert "\n" not in str(err.value)


def test_a_truncated_checkpoint_at_every_cut_is_an_error(run_dir, tmp_path):
    data = (run_dir / ckpt.CHECKPOINT).read_bytes()
    path = tmp_path / ckpt.CHECKPOINT
    for cut in (0, 7, 8, 9, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ckpt.CheckpointError, match="corrupt"):
            ckpt.load_checkpoint(tmp_path)


ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "X", ""]),
    "shape": st.lists(st.integers(-2, 2**62), max_size=3),
    "data_offsets": st.lists(st.integers(-1, 2**62), min_size=0, max_size=3),
}) | st.integers() | st.text(max_size=5) | st.none()
HEADER = st.dictionaries(st.text(max_size=8) | st.sampled_from(["__metadata__", "module.model.w",
                                                                "rng.generator"]),
                         ENTRY | st.dictionaries(st.text(max_size=4), st.text(max_size=4)
                                                 | st.integers()), max_size=4)


@FUZZ
@given(header=HEADER, data=st.binary(max_size=64), lie=st.integers(-8, 8))
def test_fuzzed_safetensors_headers_load_or_fail_in_one_line(tmp_path, header, data, lie):
    raw = json.dumps(header).encode()
    blob = struct.pack("<Q", max(0, len(raw) + lie)) + raw + data
    (tmp_path / ckpt.CHECKPOINT).write_bytes(blob)
    for load in (lambda: ckpt.load_tensors(tmp_path / ckpt.CHECKPOINT),
                 lambda: ckpt.load_checkpoint(tmp_path)):
        try:
            load()
        except ckpt.CheckpointError as err:
            assert "\n" not in str(err)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                      max_size=6))
def test_a_checkpoint_with_bytes_of_its_header_changed_loads_or_fails_in_one_line(
        run_dir, tmp_path, edits):
    data = bytearray((run_dir / ckpt.CHECKPOINT).read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    for where, value in edits:  # mostly inside the length and the JSON header
        data[where % header_end] = value
    (tmp_path / ckpt.CHECKPOINT).write_bytes(bytes(data))
    try:
        ckpt.load_checkpoint(tmp_path)
    except ckpt.CheckpointError as err:
        assert "\n" not in str(err)


def test_a_checkpoint_of_another_network_is_one_line_on_resume(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cfg = TrainConfig.from_dict({"hidden": 8, "depth": 1, "t_dim": 8, "batch": 64,
                                 "n_train": 256, "steps": 2, "threads": 1})
    other = train(cfg, tmp_path / "other", progress=False, evaluate_after=False)
    shutil.copy(other / ckpt.CHECKPOINT, run / ckpt.CHECKPOINT)  # well-formed, wrong shapes
    code, _, err = run_cli(capsys, "train", "--resume", run, "--steps", "6", "--extend")
    assert one_error_line(code, err) and "does not fit this run's config" in err, err


def test_a_corrupt_weight_file_is_one_line_on_the_command_line(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "denoiser.ema.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{")
    code, _, err = run_cli(capsys, "sample", run, "-n", "4", "--steps", "2", "--out",
                           tmp_path / "s.png")
    assert one_error_line(code, err) and "denoiser.ema.safetensors is corrupt" in err


# --- config.json -------------------------------------------------------------------------------
def with_config(run_dir: Path, tmp_path: Path, payload) -> Path:
    import shutil

    run = tmp_path / "run"
    if not run.exists():
        shutil.copytree(run_dir, run)
    (run / ckpt.CONFIG).write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return run


@pytest.mark.parametrize("change, message", [
    ({"optimiser": {"steps": "many"}}, "steps"),
    ({"optimiser": {"lr": [1]}}, "lr"),
    ({"model": {"hidden": 1.5}}, "hidden"),
    ({"model": {"colour": "red"}}, "colour"),
    ({"extras": {"x": 1}}, "extras"),
    ({"optimiser": {"steps": -3}}, "steps"),
    ({"data": {"dataset": 7}}, "dataset"),
])
def test_config_json_with_wrong_types_or_unknown_keys(run_dir, tmp_path, capsys, change,
                                                      message):
    raw = json.loads((run_dir / ckpt.CONFIG).read_text())
    for section, values in change.items():
        raw["config"].setdefault(section, {}).update(values)
    run = with_config(run_dir, tmp_path, raw)
    with pytest.raises(ckpt.CheckpointError, match=message):
        read_run(run)
    for argv in (["sample", run, "-n", "2", "--out", tmp_path / "s.png"], ["train", "--resume",
                                                                            run]):
        code, _, err = run_cli(capsys, *argv)
        assert one_error_line(code, err) and message in err, err


def test_a_config_json_asking_for_an_enormous_network_is_refused_unbuilt(run_dir, tmp_path,
                                                                          capsys):
    """hidden = 10⁹ would allocate terabytes: the shapes are checked on the meta device."""
    raw = json.loads((run_dir / ckpt.CONFIG).read_text())
    raw["config"]["model"]["hidden"] = 10**9
    run = with_config(run_dir, tmp_path, raw)
    for argv in (["sample", run, "-n", "2", "--out", tmp_path / "s.png"],
                 ["train", "--resume", run, "--steps", "6", "--extend"]):
        code, _, err = run_cli(capsys, *argv)
        assert one_error_line(code, err) and "do not fit its config" in err, err
        assert "[1000000000] in the config" in err


def nested(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.lists(inner, max_size=3),
                     st.dictionaries(st.text(max_size=6), inner, max_size=3))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                    nested, max_leaves=8)
FIELDS = list(TrainConfig.__dataclass_fields__)


@FUZZ
@given(section=st.sampled_from(["data", "model", "optimiser", "run", "evaluation", "x"]),
       key=st.sampled_from(FIELDS) | st.text(max_size=6), value=JSON,
       outer=st.sampled_from(["config", "format", "kind", "components", None]))
def test_fuzzed_config_json_reads_or_fails_in_one_line(run_dir, tmp_path, section, key, value,
                                                       outer):
    raw = json.loads((run_dir / ckpt.CONFIG).read_text())
    if outer is None or outer == "config":
        raw["config"].setdefault(section, {})
        if isinstance(raw["config"][section], dict):
            raw["config"][section][key] = value
    else:
        raw[outer] = value
    run = with_config(run_dir, tmp_path, json.dumps(raw))
    try:
        read_run(run)
    except DifflabError as err:
        assert "\n" not in str(err)


@FUZZ
@given(text=st.text(max_size=80) | st.sampled_from(["steps = 'x'", "[model]\nhidden = -1",
                                                    "base = 'default'\nbase = 1",
                                                    "[optimiser]\nlr = nan", "lr = inf",
                                                    "base = 'nope.toml'", "[[x]]"]))
def test_fuzzed_preset_files_load_or_fail_in_one_line(tmp_path, text):
    from difflab.config import load_config

    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(str(path))
    except DifflabError as err:
        assert "\n" not in str(err)


# --- pickles are never loaded ------------------------------------------------------------------
class Trap:
    """Unpickling this creates the file ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_in_a_run_directory_are_never_loaded(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Trap(marker))
    for name in ("model.pt", "checkpoint.pt", "ema.pkl", "optimizer.bin", "state.pickle"):
        (run / name).write_bytes(payload)
    torch.save({"x": Trap(marker)}, run / "denoiser.ema.safetensors")  # a pickle in disguise
    pickle.loads(payload)  # the trap works
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        load_run(run)
    code, _, err = run_cli(capsys, "sample", run, "-n", "2", "--out", tmp_path / "s.png")
    assert one_error_line(code, err), err
    torch.save({"x": Trap(marker)}, run / ckpt.CHECKPOINT)
    code, _, err = run_cli(capsys, "train", "--resume", run, "--steps", "6", "--extend")
    assert one_error_line(code, err) and "corrupt" in err, err
    assert not marker.exists()


def test_no_load_path_can_unpickle():
    """No torch.load, pickle/marshal/shelve/dill load, np.load(allow_pickle=True) or
    weights_only=False anywhere in difflab's source."""
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve",
                                           "joblib") for n in names):
                    found.append(f"{where} imports an unpickler")
            if isinstance(node, ast.Attribute) and node.attr == "load" and \
                    isinstance(node.value, ast.Name) and node.value.id == "torch":
                found.append(f"{where} torch.load")
            if isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant) and \
                    (node.arg, node.value.value) in (("weights_only", False),
                                                     ("allow_pickle", True)):
                found.append(f"{where} {node.arg}={node.value.value}")
    assert not found, found
