"""Careless and hostile input, fed through the real CLI in subprocesses: each mistake is one line on stderr,
exit status 2, no traceback, refused before training starts, and nothing the user had is lost."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bert_classify.errors import BertClassifyError, ConfigError
from bert_classify.inference.package import extract_archive
from conftest import CLASS_NAMES


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bert_classify", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def run_in_process(*args: str, capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """The CLI's main() in this process (faster; the same code path as the console script)."""
    from bert_classify.cli import main

    try:
        status = main(list(args))
    except SystemExit as exit_:  # argparse's own errors
        status = int(exit_.code or 0)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), status, captured.out, captured.err)


def assert_one_line_error(completed: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2, a single 'error: ...' line on stderr holding every `expected` piece, and no training."""
    assert completed.returncode == 2, (completed.stdout, completed.stderr)
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), completed.stderr
    for piece in expected:
        assert piece in lines[0], lines[0]
    assert "training " not in completed.stdout and "step " not in completed.stdout, completed.stdout
    return lines[0]


def train_args(data: Path, model: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train", "--train", str(data / "train.csv"), "--val", str(data / "val.csv"),
        "--classes", str(data / "classes.txt"), "--model", str(model), "--output-dir", str(output),
        "--max-steps", "2", "--batch-size", "8", "--learning-rate", "1e-3", *extra,
    ]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


# ------------------------------------------------------------------------ an existing model in --output-dir
def test_a_model_left_by_another_run_is_not_overwritten(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "model"
    first = run_cli(*train_args(tiny_data_dir, tiny_model_dir, output))
    assert first.returncode == 0, first.stderr
    before = snapshot(output)
    other = run_cli(*train_args(tiny_data_dir, tiny_model_dir, output, "--seed", "7"))
    assert_one_line_error(other, f"--output-dir {output} already holds a model", "--overwrite-output-dir")
    assert snapshot(output) == before  # not one byte changed
    forced = run_cli(*train_args(tiny_data_dir, tiny_model_dir, output, "--seed", "7", "--overwrite-output-dir"))
    assert forced.returncode == 0, forced.stderr
    assert json.loads((output / "training_config.json").read_text())["seed"] == 7


def test_output_dir_equal_to_the_base_model_is_refused(tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    before = snapshot(base)
    completed = run_cli(*train_args(tiny_data_dir, base, base))
    assert_one_line_error(completed, f"--output-dir {base} is the --model directory", "--overwrite-output-dir")
    assert snapshot(base) == before


def test_the_same_run_writes_its_own_output_again(tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A finished run re-run (a spot restart after the model was written, or killed while writing it) needs no flag."""
    output = tmp_path / "model"
    command = train_args(tiny_data_dir, tiny_model_dir, output, "--checkpoint-dir", str(tmp_path / "checkpoints"))
    first = run_cli(*command)
    assert first.returncode == 0, first.stderr
    weights = (output / "model.safetensors").read_bytes()
    (output / "model.safetensors").unlink()  # as if killed while writing the model
    (output / "config.json").write_text("{half", encoding="utf-8")
    again = run_cli(*command, "--log-every-steps", "1")  # operational options may differ
    assert again.returncode == 0, again.stderr
    assert "resumed from checkpoint at step 2" in again.stdout
    assert (output / "model.safetensors").read_bytes() == weights
    json.loads((output / "config.json").read_text())


# --------------------------------------------------------------------- output places that cannot be written
@pytest.mark.parametrize("flag", ["--output-dir", "--metrics-dir", "--checkpoint-dir"])
def test_a_file_in_place_of_a_directory_is_refused_before_training(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, flag: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    args = train_args(tiny_data_dir, tiny_model_dir, tmp_path / "model")
    completed = run_cli(*args, flag, str(blocker / "below"))  # the last --output-dir wins
    assert_one_line_error(completed, f"{flag} {blocker / 'below'}: a file is in the way", str(blocker))
    assert blocker.read_text(encoding="utf-8") == "not a directory"


def _read_only_mount_works(directory: Path) -> bool:
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs tmpfs {directory} && mount -o remount,ro {directory}"],
        capture_output=True, text=True,
    )
    return shutil.which("unshare") is not None and probe.returncode == 0


@pytest.mark.parametrize("via", ["--output-dir", "SM_MODEL_DIR", "--checkpoint-dir"])
def test_a_read_only_file_system_is_refused_before_training(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, via: str
) -> None:
    """A real read-only mount (a tmpfs remounted ro in a private mount namespace): root cannot write there either."""
    mount_point = tmp_path / "read-only"
    mount_point.mkdir()
    if shutil.which("unshare") is None or not _read_only_mount_works(mount_point):
        pytest.skip("needs `unshare --mount` (root or user namespaces) to make a real read-only mount")
    target = mount_point / "model"
    args = train_args(tiny_data_dir, tiny_model_dir, tmp_path / "model")
    env = ""
    if via == "SM_MODEL_DIR":
        args = [item for item in args if item not in ("--output-dir", str(tmp_path / "model"))]
        args += ["--checkpoint-dir", str(tmp_path / "checkpoints")]
        env = f"SM_MODEL_DIR={shlex.quote(str(target))} "
    else:
        args += [via, str(target)]
    cli = " ".join(shlex.quote(part) for part in [sys.executable, "-m", "bert_classify", *args])
    script = f"mount -t tmpfs tmpfs {mount_point} && mount -o remount,ro {mount_point} && {env}exec {cli}"
    completed = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    flag = "--output-dir (from SM_MODEL_DIR)" if via == "SM_MODEL_DIR" else via
    assert_one_line_error(completed, f"{flag} {target}: cannot write in {mount_point}", "Read-only file system")


# ------------------------------------------------------------------------------------ hostile data files
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"text": "a \\ud800 b", "label": "Animal"}', "train.jsonl:2: field 'text': character 3 is a lone UTF-16 surrogate"),
        ('{"text": "fine", "label": "Ani\\udc00mal"}', "train.jsonl:2: field 'label': character 4 is a lone UTF-16"),
        ('{"text": "deep", "label": "Animal", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
         "train.jsonl:2: JSON nested too deeply"),
        ('{"text": "big", "label": ' + "7" * 5000 + "}", "train.jsonl:2: a number longer than 4,300 digits"),
    ],
    ids=["surrogate-text", "surrogate-label", "deep-nesting", "5000-digit-label"],
)
def test_hostile_json_lines_are_one_line_errors(
    tiny_model_dir: Path, tmp_path: Path, line: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.jsonl"
    good = json.dumps({"text": "species genus habitat", "label": "Animal"})
    data.write_text(f"{good}\n{line}\n{good}\n", encoding="utf-8")
    args = ("train", "--train", str(data), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "o"))
    in_subprocess = "surrogate-text" in os.environ.get("PYTEST_CURRENT_TEST", "")  # one case end to end
    assert_one_line_error(run_cli(*args) if in_subprocess else run_in_process(*args, capsys=capsys), expected)


def test_classes_without_training_examples_are_warned_about(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join([*CLASS_NAMES, "Plant", "Village"]) + "\n", encoding="utf-8")
    args = train_args(tiny_data_dir, tiny_model_dir, tmp_path / "model")
    completed = run_in_process(*args, "--classes", str(classes), capsys=capsys)
    assert completed.returncode == 0, completed.stderr
    assert "warning: 2 classes have no training examples in " in completed.stdout
    assert "'Plant', 'Village'" in completed.stdout


def test_reader_that_is_not_a_class_never_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`--reader os:system --train 'touch X'` would run a shell command if the reader were called."""
    victim = tmp_path / "pwned"
    completed = run_cli("train", "--reader", "os:system", "--train", f"touch {victim}", "--model", str(tiny_model_dir),
                        "--output-dir", str(tmp_path / "o"))
    assert_one_line_error(completed, "--reader 'os:system': 'system' is a builtin_function_or_method, not a class")
    assert not victim.exists()


# ----------------------------------------------------------------------------------------- environment, serve
@pytest.mark.parametrize("port", ["http", "70000", "0"])
def test_a_bad_master_port_is_one_line(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, port: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MASTER_PORT", port)
    completed = run_in_process(*train_args(tiny_data_dir, tiny_model_dir, tmp_path / "o"), capsys=capsys)
    assert_one_line_error(completed, f"MASTER_PORT must be a TCP port number from 1 to 65535, not '{port}'")


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--port", "99999", "--port 99999: must be a TCP port from 0 to 65535"),
        ("--request-timeout-s", "nan", "--request-timeout-s nan: must be a finite number"),
    ],
)
def test_serve_refuses_bad_flags_before_loading(tiny_model_dir: Path, flag: str, value: str, expected: str) -> None:
    completed = run_cli("serve", "--model", str(tiny_model_dir), flag, value, timeout=120)
    assert_one_line_error(completed, expected)


@pytest.mark.parametrize(
    "argv",
    [["train", "--epoch", "2"], ["predict", "--model", "m", "--input", "x", "--top", "2"],
     ["serve", "--model", "m", "--max-batch-s", "4"]],
)
def test_abbreviated_flags_are_not_accepted(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """argparse would read `--epoch 2` as `--epochs 2`; every command takes whole flag names only."""
    completed = run_in_process(*argv, capsys=capsys)
    assert completed.returncode == 2
    assert f"unrecognized arguments: {argv[-2]} {argv[-1]}" in completed.stderr, completed.stderr


def test_predict_refuses_a_shorter_max_seq_len_than_training_does(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("one text\n", encoding="utf-8")
    common = ["predict", "--model", str(tiny_model_dir), "--input", str(texts), "--output", str(tmp_path / "p.jsonl")]
    refused = run_in_process(*common, "--max-seq-len", "2", capsys=capsys)
    assert_one_line_error(refused, "--max-seq-len 2: must be between 3 and")
    assert run_in_process(*common, "--max-seq-len", "3", capsys=capsys).returncode == 0


# ------------------------------------------------------------------------------------------ pickle weights
def _pickle_only_model(tiny_model_dir: Path, directory: Path) -> Path:
    shutil.copytree(tiny_model_dir, directory)
    (directory / "model.safetensors").unlink()
    # Bytes that are never unpickled: the refusal must come from the file's kind, not its contents.
    (directory / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle that must never be loaded")
    return directory


@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_pickle_only_weights_are_refused(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _pickle_only_model(tiny_model_dir, tmp_path / "pickled")
    texts = tmp_path / "texts.txt"
    texts.write_text("one text\n", encoding="utf-8")
    argv = {
        "train": train_args(tiny_data_dir, model, tmp_path / "o"),
        "predict": ["predict", "--model", str(model), "--input", str(texts), "--output", str(tmp_path / "p.jsonl")],
        "evaluate": ["evaluate", "--model", str(model), "--data", str(tiny_data_dir / "val.csv"),
                     "--output-dir", str(tmp_path / "e")],
    }[command]
    message = assert_one_line_error(run_in_process(*argv, capsys=capsys), f"--model: {model} holds pickle weights (pytorch_model.bin)",
                                    "safetensors only", "safe_serialization=True")
    assert "weights_only" not in message


# --------------------------------------------------------------------------------------- hostile archives
def _gzip_bomb(path: Path, unpacked_bytes: int) -> Path:
    """One member of zeros: a few hundred KB of gzip that unpacks to `unpacked_bytes`."""
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        member = tarfile.TarInfo("model.safetensors")
        member.size = unpacked_bytes

        class Zeros(io.RawIOBase):
            left = unpacked_bytes

            def readable(self) -> bool:
                return True

            def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
                count = min(len(buffer), self.left)
                buffer[:count] = bytes(count)
                self.left -= count
                return count

        tar.addfile(member, io.BufferedReader(Zeros()))
    return path


def test_a_gzip_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    bomb = _gzip_bomb(tmp_path / "model.tar.gz", 200 * 1024 * 1024)
    assert bomb.stat().st_size < 400_000
    target = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"unpacks to more than 10,000,000 bytes \(at 'model.safetensors'\)"):
        extract_archive(bomb, target, max_bytes=10_000_000)
    assert not any(target.iterdir())
    # the same cap through the environment, on the real CLI
    texts = tmp_path / "texts.txt"
    texts.write_text("one text\n", encoding="utf-8")
    completed = run_cli("predict", "--model", str(bomb), "--input", str(texts), "--output", str(tmp_path / "p.jsonl"),
                        env={"BERT_CLASSIFY_MAX_ARCHIVE_BYTES": "10000000"}, timeout=120)
    assert_one_line_error(completed, "unpacks to more than 10,000,000 bytes", "BERT_CLASSIFY_MAX_ARCHIVE_BYTES")


def test_an_archive_of_too_many_files_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for index in range(2_001):
            tar.addfile(tarfile.TarInfo(f"f{index:05d}"), io.BytesIO(b""))
    target = tmp_path / "out"
    with pytest.raises(BertClassifyError, match=r"more than 2,000 entries \(at 'f02000'\)"):
        extract_archive(archive, target, max_files=2_000)
    assert not any(target.iterdir())
    assert len(list(extract_archive(archive, tmp_path / "fits", max_files=2_001).iterdir())) == 2_001
    monkeypatch.setenv("BERT_CLASSIFY_MAX_ARCHIVE_FILES", "2000")
    with pytest.raises(BertClassifyError, match="more than 2,000 entries"):
        extract_archive(archive, tmp_path / "env")
    monkeypatch.setenv("BERT_CLASSIFY_MAX_ARCHIVE_FILES", "lots")
    with pytest.raises(ConfigError, match="BERT_CLASSIFY_MAX_ARCHIVE_FILES must be a whole number >= 1, not 'lots'"):
        extract_archive(archive, tmp_path / "env")


def test_an_output_written_before_an_option_existed_is_still_this_runs_own(tmp_path: Path) -> None:
    """training_config.json of an older version lacks the options added since; they ran at their defaults."""
    from bert_classify.config import TrainConfig, _is_own_output

    config = TrainConfig(train="train.csv", output_dir=str(tmp_path / "model"))
    saved = config.to_dict()
    for newer in ("gradient_checkpointing", "multi_label", "label_separator"):
        saved.pop(newer, None)
    (tmp_path / "training_config.json").write_text(json.dumps(saved))
    assert _is_own_output(config, tmp_path / "training_config.json")
    changed = TrainConfig(train="train.csv", output_dir=str(tmp_path / "model"), gradient_checkpointing=True)
    assert not _is_own_output(changed, tmp_path / "training_config.json")  # not the default: another run
