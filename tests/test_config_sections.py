"""TrainConfig in sections: every field's section and help, the sectioned form and its inverse,
old flat run configs, sectioned presets, and presets that inherit (``base = ...``)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from difflab.config import (
    SECTIONS,
    TrainConfig,
    builtin_presets,
    field_help,
    field_section,
    load_config,
    read_preset,
)
from difflab.errors import ConfigError
from difflab.samplers import SAMPLERS


def write(path, text: str):
    path.write_text(text)
    return str(path)


# --- fields -------------------------------------------------------------------------------------
def test_every_field_has_a_section_and_help():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["section"] in SECTIONS, f.name
        assert f.metadata["help"].strip() and "\n" not in f.metadata["help"], f.name
        assert field_section(f.name) == f.metadata["section"]
        assert field_help(f.name).startswith(f.metadata["help"])
    used = {f.metadata["section"] for f in dataclasses.fields(TrainConfig)}
    assert used == set(SECTIONS)


def test_field_help_lists_the_samplers_and_names_unknown_keys():
    assert all(name in field_help("eval_sampler") for name in SAMPLERS)
    with pytest.raises(ConfigError, match="'stepz'"):
        field_help("stepz")


def test_help_renders_in_argparse():  # argparse %-formats help: a stray % would raise
    p = argparse.ArgumentParser()
    for f in dataclasses.fields(TrainConfig):
        p.add_argument(f"--{f.name}", help=field_help(f.name) + " (default: %(default)s)")
    assert "BigGAN" in p.format_help()


def test_threads_default_uses_every_core():
    assert TrainConfig().threads == 0
    with pytest.raises(ConfigError, match="'threads'"):
        TrainConfig(threads=-1)


# --- sections -----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", builtin_presets())
def test_sections_round_trip(preset):
    cfg = load_config(preset)
    sections = cfg.to_sections()
    assert tuple(sections) == SECTIONS
    assert sum(len(s) for s in sections.values()) == len(dataclasses.fields(TrainConfig))
    assert TrainConfig.from_sections(sections) == cfg
    assert TrainConfig.from_sections(cfg.to_dict()) == cfg  # flat works too


def test_sections_group_fields():
    s = TrainConfig().to_sections()
    assert s["model"]["model"] == "auto" and s["data"]["data"] == ""  # names shared with sections
    assert "lr" in s["optimiser"] and "eval_steps" in s["evaluation"] and "seed" in s["run"]
    assert "rescale_skip" in s["model"] and "T" in s["diffusion"] and "cond" in s["conditioning"]


def test_flat_config_of_an_old_run_still_loads():
    # a digits run's config.json before sections and the U-Net options (and threads pinned)
    old = {"dataset": "digits", "n_train": 100000, "image_size": 8, "data": "", "channels": 1,
           "schedule": "linear", "T": 1000, "model": "unet", "hidden": 64, "depth": 3,
           "t_dim": 64, "model_channels": 32, "channel_mult": "1,2", "num_res_blocks": 2,
           "attention": "", "dropout": 0.0, "variance": "beta_tilde", "loss": "simple",
           "steps": 1500, "batch": 128, "lr": 0.002, "seed": 0, "threads": 2, "out": ""}
    cfg = TrainConfig.from_sections(old)
    assert cfg == TrainConfig.from_dict(old)
    assert (cfg.threads, cfg.steps, cfg.model) == (2, 1500, "unet")
    assert not cfg.rescale_skip and cfg.mid_attention and cfg.num_head_channels == 0


def test_from_sections_names_the_problem():
    with pytest.raises(ConfigError, match=r"'steps' belongs in \[optimiser\], not \[model\]"):
        TrainConfig.from_sections({"model": {"steps": 3}})
    with pytest.raises(ConfigError, match=r"unknown section \[train\]"):
        TrainConfig.from_sections({"train": {"steps": 3}})
    with pytest.raises(ConfigError, match="'stepz' in"):
        TrainConfig.from_sections({"optimiser": {"stepz": 3}})
    with pytest.raises(ConfigError, match="'steps' is given twice"):
        TrainConfig.from_sections({"steps": 2, "optimiser": {"steps": 3}})
    with pytest.raises(ConfigError, match="'steps'"):
        TrainConfig.from_sections({"optimiser": {"steps": "many"}})
    with pytest.raises(ConfigError, match="'steps'"):
        TrainConfig.from_sections({"optimiser": {"steps": 0}})


# --- presets ------------------------------------------------------------------------------------
def test_sectioned_preset_loads(tmp_path):
    p = write(tmp_path / "p.toml", 'lr = 1\n[data]\ndataset = "moons"\n[optimiser]\nsteps = 7\n'
                                   '[model]\nmodel = "mlp"\nhidden = 32\n')
    cfg = load_config(p, {"steps": 9, "seed": None})
    assert (cfg.dataset, cfg.steps, cfg.lr, cfg.model, cfg.hidden) == ("moons", 9, 1.0, "mlp", 32)
    assert read_preset(p) == {"lr": 1, "dataset": "moons", "steps": 7, "model": "mlp",
                              "hidden": 32}


def test_builtin_presets_in_sections_are_flat_tables():
    assert load_config("default") == TrainConfig()
    assert set(read_preset("default")) == set(TrainConfig().to_dict()) - {"out"}
    assert load_config("moons") == TrainConfig(dataset="moons")  # base = "default"


@pytest.mark.parametrize("text,match", [
    ('[model]\nsteps = 3\n', r"belongs in \[optimiser\]"),
    ('[train]\nsteps = 3\n', "malformed"),
    ('[model]\nwidth = 3\n', "'width'"),
    ('[model]\nnum_heads = 3\n', "'num_heads'"),
    ('[model]\nnum_head_channels = 24\n', "'num_head_channels'"),
    ('base = 3\n', "'base'"),
    ('base = "no-such-preset"\n', "'base'.*unknown preset"),
    ('base = "missing.toml"\n', "'base'.*does not exist"),
])
def test_bad_sectioned_presets_raise_config_errors(tmp_path, text, match):
    p = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(p)
    assert "\n" not in str(err.value)


def test_preset_inherits_and_overrides(tmp_path):
    child = write(tmp_path / "child.toml", 'base = "digits"\n[optimiser]\nsteps = 77\n')
    cfg = load_config(child)
    assert cfg == dataclasses.replace(load_config("digits"), steps=77)
    assert "base" not in read_preset(child)


def test_base_chain_with_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "a.toml", 'base = "digits"\nsteps = 10\nlr = 0.5\n')
    write(tmp_path / "b.toml", 'base = "sub/a.toml"\n[optimiser]\nsteps = 20\n')
    c = write(tmp_path / "c.toml", 'base = "b.toml"\n[optimiser]\nbatch = 8\n')
    cfg = load_config(c, {"seed": 5})
    want = dataclasses.replace(load_config("digits"), steps=20, lr=0.5, batch=8, seed=5)
    assert cfg == want


def test_builtin_children_equal_their_flat_form():
    digits = load_config("digits")
    assert load_config("digits-cond") == dataclasses.replace(digits, cond="class",
                                                             eval_guidance=1.0)
    assert load_config("digits-text") == dataclasses.replace(
        digits, cond="text", text_tokens=12, attention="2", eval_guidance=1.0)


@pytest.mark.parametrize("files", [
    {"a.toml": 'base = "a.toml"\n'},
    {"a.toml": 'base = "b.toml"\n', "b.toml": 'base = "a.toml"\n'},
    {"a.toml": 'base = "b.toml"\n', "b.toml": 'base = "c.toml"\n', "c.toml": 'base = "b.toml"\n'},
])
def test_inheritance_cycle_is_a_config_error(tmp_path, files):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError, match="'base'.*cycle"):
        read_preset(str(tmp_path / "a.toml"))


def test_the_readme_lists_every_built_in_preset():
    """The README's list of built-in presets is the presets folder (one is added → the list
    must name it)."""
    from importlib import resources
    from pathlib import Path

    names = {f.name.removesuffix(".toml") for f in
             resources.files("difflab").joinpath("config/presets").iterdir()
             if f.name.endswith(".toml")}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = readme.split("Built in (`src/difflab/config/presets/`", 1)[1].split("\n\n", 2)[1]
    assert len(names) >= 28
    assert {n for n in names if f"`{n}`" not in listed} == set()
