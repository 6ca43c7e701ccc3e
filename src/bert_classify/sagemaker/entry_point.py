"""SageMaker training entry script: hyper-parameters become `bert-classify train` flags, then the model dir is made deployable.

Shipped in sourcedir.tar.gz as the job's `sagemaker_program`; it holds no logic of its own beyond
the boolean translation in `environment.py` and the call to the inference packager.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    from bert_classify.cli import main as cli_main
    from bert_classify.errors import BertClassifyError
    from bert_classify.sagemaker.environment import boolean_flags_to_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        train_argv = boolean_flags_to_cli(argv)
    except BertClassifyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("bert-classify train " + " ".join(train_argv), flush=True)
    status = cli_main(["train", *train_argv])
    if status != 0:
        return status
    model_dir = _output_dir(train_argv)
    if os.environ.get("RANK", "0") == "0" and model_dir is not None:
        # The serving code goes next to the weights so that model.tar.gz deploys as is.
        from bert_classify.inference.package import write_inference_code

        write_inference_code(model_dir)
        print(f"wrote inference code to {model_dir / 'code'}", flush=True)
    return 0


def _output_dir(train_argv: Sequence[str]) -> Path | None:
    """The directory `train` wrote the model to: --output-dir if given, else SM_MODEL_DIR."""
    for index, item in enumerate(train_argv):
        if item == "--output-dir" and index + 1 < len(train_argv):
            return Path(train_argv[index + 1])
        if item.startswith("--output-dir="):
            return Path(item.split("=", 1)[1])
    directory = os.environ.get("SM_MODEL_DIR")
    return Path(directory) if directory else None


if __name__ == "__main__":
    raise SystemExit(main())
