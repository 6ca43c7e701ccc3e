"""bert-classify: fine-tune BERT-family text classifiers locally, under torchrun and on SageMaker spot.

The public Python API lives in the submodules; the most used names are re-exported lazily here.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "BertClassifyError", "TrainConfig", "train"]


def __getattr__(name: str):  # lazy: importing the package must not import torch
    if name == "BertClassifyError":
        from bert_classify.errors import BertClassifyError

        return BertClassifyError
    if name == "TrainConfig":
        from bert_classify.config import TrainConfig

        return TrainConfig
    if name == "train":
        from bert_classify.training.loop import train

        return train
    raise AttributeError(name)
