"""Strict typed config: inheritance, overrides, errors naming key and file, dump/reload identity."""
from pathlib import Path

import pytest
import yaml

from core.config import (Config, ConfigError, DataCfg, config_from_dict, dump_config, load_config, parse_params)
from dataclasses import dataclass


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_and_types(tmp_path):
    cfg = load_config(write(tmp_path / "a.yaml", "train: {epochs: 3}\noptim: {lr: 1e-3}\n"))
    assert cfg.train.epochs == 3 and cfg.optim.lr == pytest.approx(1e-3)  # "1e-3" is a string for YAML 1.1
    assert cfg.data == DataCfg() and isinstance(cfg.optim.betas, tuple)


def test_base_inheritance_and_override_order(tmp_path):
    write(tmp_path / "_base_" / "b.yaml", "model: {name: vse, params: {hidden: 8, word_dim: 4}}\ntrain: {epochs: 5}\n")
    cfg = load_config(write(tmp_path / "c.yaml", "_base_: _base_/b.yaml\nmodel: {params: {hidden: 16}}\n"),
                      ["train.epochs=7", "loss.terms.0.weight=2"])
    assert cfg.model.params == {"hidden": 16, "word_dim": 4}  # params merge key by key
    assert cfg.train.epochs == 7 and cfg.loss.terms[0].weight == 2.0


@pytest.mark.parametrize("text,key", [("train: {epoch: 3}\n", "train.epoch"), ("modle: {}\n", "modle"),
                                      ("loss: {terms: [{name: triplet, wieght: 1}]}\n", "loss.terms.0.wieght")])
def test_unknown_key_names_key_and_file(tmp_path, text, key):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"'{key}'" in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("override,key", [("train.epochs=abc", "train.epochs"), ("train.deterministic=3", "train.deterministic"),
                                          ("optim.betas=0.9", "optim.betas"), ("train.nope=1", "train.nope")])
def test_override_type_errors(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path / "a.yaml", "{}\n"), [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path / "x.yaml", "a: [1,\n"))


def test_dump_reload_identical(tmp_path):
    cfg = load_config(write(tmp_path / "a.yaml", "eval: {scene_recall: [1, 5]}\noptim: {lr_mult: {backbone: 0.1}}\n"),
                      ["loss.terms.0.params={margin: 0.3}"])
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg and isinstance(again.eval.scene_recall, tuple)


def test_parse_params_strict():
    @dataclass(frozen=True)
    class P:
        width: int = 4
        name: str = "x"

    assert parse_params(P, {"width": 8}, "model.params", "f.yaml").width == 8
    with pytest.raises(ConfigError, match=r"f\.yaml.*'model\.params\.depth'"):
        parse_params(P, {"depth": 2}, "model.params", "f.yaml")
    with pytest.raises(ConfigError, match=r"model\.params\.width"):
        parse_params(P, {"width": "big"}, "model.params", "f.yaml")


def test_every_shipped_config_loads():
    root = Path(__file__).resolve().parents[2] / "configs"
    files = [p for p in root.rglob("*.yaml") if "_base_" not in p.parts]
    assert files, "no configs shipped"
    for p in files:
        assert isinstance(load_config(p), Config), p


@pytest.mark.parametrize("override,key,want", [
    ("data.batch_size=-4", "data.batch_size", ">= 1"), ("data.eval_batch_size=0", "data.eval_batch_size", ">= 1"),
    ("train.epochs=-1", "train.epochs", ">= 0"), ("optim.lr=-0.1", "optim.lr", ">= 0"),
    ("data.image_size=0", "data.image_size", ">= 1"), ("data.n_folds=0", "data.n_folds", ">= 1"),
    ("data.num_workers=-2", "data.num_workers", ">= 0"), ("data.val_ratio=1.0", "data.val_ratio", ">= 0 and < 1"),
    ("optim.lr=.nan", "optim.lr", ">= 0"), ("train.log_every=0", "train.log_every", ">= 1"),
    ("eval.scene_recall=[0, 5]", "eval.scene_recall", ">= 1"),
])
def test_range_errors_name_key_and_file(tmp_path, override, key, want):
    path = write(tmp_path / "a.yaml", "{}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, [override])
    assert str(e.value).startswith(f"{path}: '{key}' must be") and want in str(e.value)


@pytest.mark.parametrize("override,key", [("train.amp=bf32", "train.amp"), ("optim.name=adamx", "optim.name"),
                                          ("data.tokenizer=word", "data.tokenizer"),
                                          ("optim.scheduler=linear", "optim.scheduler")])
def test_choice_errors_list_the_choices(tmp_path, override, key):
    with pytest.raises(ConfigError, match=rf"'{key}' must be one of .*, got"):
        load_config(write(tmp_path / "a.yaml", "{}\n"), [override])


def test_kfold_needs_two_folds(tmp_path):
    with pytest.raises(ConfigError, match=r"'data\.n_folds' must be >= 2 with data\.protocol=kfold"):
        load_config(write(tmp_path / "a.yaml", "data: {protocol: kfold, n_folds: 1}\n"))


def test_copied_config_base_error_names_file_key_and_shipped_base(tmp_path):
    shipped = Path(__file__).resolve().parents[2] / "configs"
    copy = write(tmp_path / "mine.yaml", (shipped / "rsitmd_galr.yaml").read_text())
    with pytest.raises(ConfigError) as e:
        load_config(copy)
    msg = str(e.value)
    base = yaml.safe_load(copy.read_text())["_base_"]
    assert msg.startswith(f"{copy}: '_base_: {base}' not found") and str(tmp_path) in msg
    assert (shipped / base).is_file() and msg.endswith(f"needs an absolute _base_, e.g. '_base_: {shipped / base}'")
    other = write(tmp_path / "other.yaml", "_base_: nowhere/b.yaml\n")
    with pytest.raises(ConfigError, match="give _base_ as an absolute path"):
        load_config(other)


def test_closest_config_names():
    from engine.cli import config_names, resolve_config_path

    assert "rsitmd_galr.yaml" in config_names() and not any("_base_" in n for n in config_names())
    with pytest.raises(ConfigError, match=r"closest in configs/: rsitmd_galr\.yaml"):
        resolve_config_path("rsitmd_glar.yaml")
    assert resolve_config_path("rsitmd_galr").name == "rsitmd_galr.yaml"


def test_old_rerank_keys_migrate_to_rerank_params(tmp_path):
    """Configs and checkpoints written with eval.rerank_k / rerank_wp1 / rerank_wp2 still load."""
    old = {"eval": {"rerank": "galr", "rerank_k": 20, "rerank_wp1": 0.5, "rerank_wp2": 1.3, "tune_rerank": False}}
    cfg = config_from_dict(old)
    assert cfg.eval.rerank_params == {"k": 20, "wp1": 0.5, "wp2": 1.3} and cfg.eval.rerank == "galr"
    assert "rerank_k" not in dump_config(cfg) and config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    path = write(tmp_path / "a.yaml", "eval: {rerank_k: 12, rerank_params: {k: 40}}\n")
    assert load_config(path).eval.rerank_params == {"k": 40}  # the new place wins
    assert load_config(path, ["eval.rerank_wp2=0.7"]).eval.rerank_params == {"k": 40, "wp2": 0.7}  # old --set too
    assert load_config(write(tmp_path / "b.yaml", "{}\n")).eval.rerank_params == {}
