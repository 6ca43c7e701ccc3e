"""The SageMaker container contract: SM_* variables -> TrainConfig fields, hyper-parameter booleans, torchrun settings."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from bert_classify.commands.train import config_from_args
from bert_classify.errors import ConfigError
from bert_classify.sagemaker.environment import (
    CHECKPOINT_DIR,
    boolean_flags_to_cli,
    channel_file,
    distributed_settings,
    in_sagemaker_training,
    model_channel_dir,
    training_defaults,
)


def _channels(root: Path) -> dict[str, str]:
    environ = {"SM_MODEL_DIR": str(root / "model-out"), "SM_OUTPUT_DATA_DIR": str(root / "output-data")}
    for channel, name in (("train", "train.csv"), ("val", "val.csv"), ("classes", "classes.txt")):
        directory = root / "input" / channel
        directory.mkdir(parents=True)
        (directory / name).write_text("x\n", encoding="utf-8")
        environ[f"SM_CHANNEL_{channel.upper()}"] = str(directory)
    return environ


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_outside_sagemaker_there_are_no_defaults() -> None:
    assert not in_sagemaker_training({})
    assert training_defaults({"HOME": "/root"}) == {}


def test_channels_and_directories_map_to_train_options(tmp_path: Path, tiny_model_dir: Path) -> None:
    environ = {**_channels(tmp_path), "SM_CHANNEL_MODEL": str(tiny_model_dir)}
    defaults = training_defaults(environ)
    assert defaults == {
        "train": str(tmp_path / "input/train/train.csv"),
        "val": str(tmp_path / "input/val/val.csv"),
        "classes": str(tmp_path / "input/classes/classes.txt"),
        "model": str(tiny_model_dir),
        "output_dir": str(tmp_path / "model-out"),
        "metrics_dir": str(tmp_path / "output-data"),
        "checkpoint_dir": CHECKPOINT_DIR,
        "tensorboard_dir": str(tmp_path / "tensorboard"),  # beside SM_OUTPUT_DATA_DIR, as /opt/ml/output/tensorboard
    }


def test_flags_the_user_gives_win_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    for variable, value in _channels(tmp_path).items():
        monkeypatch.setenv(variable, value)
    args = argparse.Namespace(func=None, command="train", raw_argv=[], checkpoint_dir=str(tmp_path / "ckpt"), epochs=1)
    config = config_from_args(args)
    assert config.checkpoint_dir == str(tmp_path / "ckpt")
    assert config.train == str(tmp_path / "input/train/train.csv")
    assert config.output_dir == str(tmp_path / "model-out")
    assert config.epochs == 1


def test_a_channel_with_several_files_uses_the_one_named_after_it(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("a", encoding="utf-8")
    (tmp_path / "README.txt").write_text("b", encoding="utf-8")
    (tmp_path / ".hidden").write_text("c", encoding="utf-8")
    assert channel_file("train", tmp_path) == tmp_path / "train.csv"


def test_an_ambiguous_or_empty_channel_is_refused_with_its_files_named(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a", encoding="utf-8")
    (tmp_path / "b.csv").write_text("b", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"channel 'train' .* holds 2 files \(a.csv, b.csv\).*--train"):
        channel_file("train", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="is empty"):
        channel_file("val", empty)


def test_model_channel_with_a_model_tar_gz_is_extracted_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    channel = tmp_path / "channel"
    channel.mkdir()
    members = {path.name: path.read_bytes() for path in tiny_model_dir.iterdir() if path.is_file()}
    _tar_gz(channel / "model.tar.gz", members)
    environ = {"BERT_CLASSIFY_MODEL_EXTRACT_DIR": str(tmp_path / "work")}
    first = model_channel_dir(channel, environ)
    assert (first / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    assert first.is_relative_to(tmp_path / "work")
    assert model_channel_dir(channel, environ) == first  # a second rank reuses the copy
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(first).num_labels == 3


def test_model_channel_with_the_model_in_one_subdirectory(tmp_path: Path) -> None:
    (tmp_path / "minilm").mkdir()
    (tmp_path / "minilm" / "config.json").write_text("{}", encoding="utf-8")
    assert model_channel_dir(tmp_path) == tmp_path / "minilm"


@pytest.mark.parametrize("evil", ["../escape.txt", "/etc/evil.txt", "sub/../../escape.txt"])
def test_an_archive_writing_outside_its_directory_is_refused(tmp_path: Path, evil: str) -> None:
    channel = tmp_path / "channel"
    channel.mkdir()
    _tar_gz(channel / "model.tar.gz", {"config.json": b"{}", evil: b"boom"})
    with pytest.raises(ConfigError, match="outside"):
        model_channel_dir(channel, {"BERT_CLASSIFY_MODEL_EXTRACT_DIR": str(tmp_path / "work")})
    assert not (tmp_path / "escape.txt").exists()


def test_an_archive_with_a_symlink_is_refused(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    channel.mkdir()
    with tarfile.open(channel / "model.tar.gz", "w:gz") as tar:
        link = tarfile.TarInfo("config.json")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ConfigError, match="link"):
        model_channel_dir(channel, {"BERT_CLASSIFY_MODEL_EXTRACT_DIR": str(tmp_path / "work")})


def test_a_model_channel_without_a_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(ConfigError, match="neither a model directory"):
        model_channel_dir(tmp_path)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--freeze-encoder", "True", "--epochs", "2"], ["--freeze-encoder", "--epochs", "2"]),
        (["--freeze-encoder", "False", "--epochs", "2"], ["--epochs", "2"]),
        (["--force-resume", "true"], ["--force-resume"]),
        (["--group-by-length", "False"], ["--no-group-by-length"]),
        (["--group-by-length", "True"], []),
        (["--no-group-by-length", "True"], ["--no-group-by-length"]),
        (["--freeze_encoder", "True", "--max_steps", "2"], ["--freeze-encoder", "--max-steps", "2"]),
        (["--freeze-encoder", "--learning-rate", "auto"], ["--freeze-encoder", "--learning-rate", "auto"]),
        (["--max-steps=2", "--force-resume=False"], ["--max-steps=2"]),
        (["--seed", "-1"], ["--seed", "-1"]),
    ],
)
def test_hyper_parameter_booleans_become_train_flags(argv: list[str], expected: list[str]) -> None:
    assert boolean_flags_to_cli(argv) == expected


def test_a_boolean_hyper_parameter_that_is_not_a_boolean_is_refused() -> None:
    with pytest.raises(ConfigError, match="--freeze-encoder must be True or False, not 'maybe'"):
        boolean_flags_to_cli(["--freeze-encoder", "maybe"])


def test_distributed_settings_for_the_second_of_two_gpu_hosts() -> None:
    environ = {"SM_HOSTS": json.dumps(["algo-2", "algo-1"]), "SM_CURRENT_HOST": "algo-2", "SM_NUM_GPUS": "4"}
    assert distributed_settings(environ) == {
        "nnodes": 2,
        "node_rank": 1,
        "nproc_per_node": 4,
        "master_addr": "algo-1",
        "master_port": 29500,
    }


def test_distributed_settings_on_a_cpu_instance_and_outside_sagemaker() -> None:
    cpu = distributed_settings({"SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1", "SM_NUM_GPUS": "0", "MASTER_PORT": "1234"})
    assert cpu == {"nnodes": 1, "node_rank": 0, "nproc_per_node": 1, "master_addr": "algo-1", "master_port": 1234}
    local = distributed_settings({})
    assert (local["nnodes"], local["node_rank"], local["master_addr"]) == (1, 0, "127.0.0.1")
    assert local["nproc_per_node"] >= 1


def test_distributed_settings_refuse_an_unknown_current_host() -> None:
    with pytest.raises(ConfigError, match="SM_CURRENT_HOST 'algo-9' is not in SM_HOSTS"):
        distributed_settings({"SM_HOSTS": '["algo-1", "algo-2"]', "SM_CURRENT_HOST": "algo-9", "SM_NUM_GPUS": "1"})
