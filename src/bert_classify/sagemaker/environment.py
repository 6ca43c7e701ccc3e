"""The SageMaker container contract in one place: SM_* variables mapped to our options.

(Placeholder: the SageMaker work fills this in.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def in_sagemaker_training(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return "SM_TRAINING_ENV" in environ or "SM_MODEL_DIR" in environ


def training_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """TrainConfig field -> value implied by the SageMaker environment (empty outside SageMaker)."""
    return {}
