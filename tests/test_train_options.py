"""Each `train` option is described once, and every one survives launcher -> SageMaker -> entry point -> argparse.

SageMaker passes each hyper-parameter to the entry script as `--name value`; an on/off flag that the
container did not translate back would fail there with "unrecognized arguments: True". These tests walk
every option of the table (and a test-only one added to it) through that whole path.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from bert_classify import train_options
from bert_classify.commands import train as train_command
from bert_classify.config import TrainConfig
from bert_classify.sagemaker.environment import boolean_flags_to_cli
from bert_classify.sagemaker.launch import LAUNCHER_OWNED_FLAGS, normalise_hyperparameters
from bert_classify.train_options import TRAIN_OPTIONS, TrainOption

SAMPLE_VALUES = {int: "3", float: "0.05", str: "text", train_options.parse_learning_rate: "1e-4"}
# Options that are refused without another one (config.py validation): sent together.
# options refused without a companion option
COMPANIONS = {"chunk-stride": {"long-texts": "chunk"}, "label-separator": {"multi-label": True}}


def container_config(hyperparameters: dict[str, str], tmp_path: Path) -> TrainConfig:
    """What the container's `train` builds from the launcher's hyper-parameters, as SageMaker passes them."""
    argv: list[str] = []
    for name, value in hyperparameters.items():  # sagemaker-training: `--name value` for each
        argv += [f"--{name}", value]
    train_argv = boolean_flags_to_cli(argv)
    parser = argparse.ArgumentParser(exit_on_error=False)
    train_command.register(parser.add_subparsers(dest="command"))
    data = tmp_path / "train.csv"
    data.write_text('"1","t","x"\n', encoding="utf-8")
    try:
        args = parser.parse_args(["train", "--train", str(data), *train_argv])
    except SystemExit as error:  # argparse's own refusal: the failure this test exists to catch
        raise AssertionError(f"the container's train refused {train_argv}") from error
    return train_command.config_from_args(args)


def test_the_option_table_covers_every_config_field_once() -> None:
    fields = [option.field for option in TRAIN_OPTIONS if option.field]
    assert sorted(fields) == sorted(field.name for field in dataclasses.fields(TrainConfig))
    assert len({option.flag for option in TRAIN_OPTIONS}) == len(TRAIN_OPTIONS)
    assert set(LAUNCHER_OWNED_FLAGS) == {"train", "val", "classes", "model", "output-dir", "metrics-dir", "checkpoint-dir", "tensorboard-dir", "nproc"}


@pytest.mark.parametrize("option", [o for o in TRAIN_OPTIONS if o.switch], ids=lambda o: o.flag)
@pytest.mark.parametrize("enabled", [True, False])
def test_every_switch_reaches_the_container_config(option: TrainOption, enabled: bool, tmp_path: Path) -> None:
    hyperparameters = normalise_hyperparameters({option.flag: enabled})
    assert hyperparameters == {option.flag: str(enabled)}
    config = container_config(hyperparameters, tmp_path)
    assert getattr(config, option.field) == option.value_from_switch(enabled)
    # The field's own name states the field's value: group_by_length=False == --no-group-by-length
    by_field = normalise_hyperparameters({option.field: option.value_from_switch(enabled)})
    assert container_config(by_field, tmp_path) == config


@pytest.mark.parametrize(
    "option", [o for o in TRAIN_OPTIONS if not o.switch and not o.launcher_owned], ids=lambda o: o.flag
)
def test_every_valued_option_reaches_the_container_config(option: TrainOption, tmp_path: Path) -> None:
    text = option.choices[-1] if option.choices else SAMPLE_VALUES[option.parse]
    if option.flag == "reader":
        pytest.skip("a plug-in reader is imported by train; its value is checked there")
    hyperparameters = normalise_hyperparameters({**COMPANIONS.get(option.flag, {}), option.flag: text})
    config = container_config(hyperparameters, tmp_path)
    assert getattr(config, option.field) == (option.parse(text) if option.parse else text)


def test_a_new_switch_added_to_the_table_works_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A new on/off option needs one line in the table: CLI, launcher and container follow."""
    extra = TrainOption("test-only-freeze", "freeze_encoder", "model", "test-only alias", None, switch=True)
    monkeypatch.setattr(train_options, "TRAIN_OPTIONS", (*TRAIN_OPTIONS, extra))
    monkeypatch.setattr(train_options, "OPTIONS_BY_FLAG", {**train_options.OPTIONS_BY_FLAG, extra.flag: extra})
    hyperparameters = normalise_hyperparameters({extra.flag: "true"})
    assert hyperparameters == {"test-only-freeze": "True"}
    assert container_config(hyperparameters, tmp_path).freeze_encoder is True
    assert container_config(normalise_hyperparameters({extra.flag: False}), tmp_path).freeze_encoder is False


def test_the_library_does_not_import_the_cli() -> None:
    import ast

    source = Path(train_options.__file__).parent / "sagemaker" / "launch.py"
    imported = {
        node.module for node in ast.walk(ast.parse(source.read_text())) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not any(name.startswith("bert_classify.commands") for name in imported)
