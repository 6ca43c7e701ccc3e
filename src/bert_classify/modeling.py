"""Load a BERT-family model and tokenizer for sequence classification, and build tiny local ones.

`load_for_training` sizes the classification head to the data's classes whatever head the checkpoint
had; `build_tiny_model` makes a small random BERT with a WordPiece vocabulary trained on the fly, so
that the quickstart and the tests run offline with no download.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bert_classify.errors import ConfigError

# Weight files in pickle format (torch.save, Keras/TF and Flax formats aside).
_PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Models whose learned position table is offset by the padding index (RoBERTa family).
_POSITION_OFFSET_MODEL_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer"}


def _quiet_transformers() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("transformers.modeling_utils", "transformers.configuration_utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_model_config(model_name_or_path: str) -> Any:
    """The model's configuration (small: read before any weights, to validate options up front).

    A local model directory whose weights are pickle files only (pytorch_model.bin) is refused here,
    before anything reads them: weights are loaded from safetensors only.
    """
    if os.path.isdir(model_name_or_path):
        require_safetensors(Path(model_name_or_path))
    _quiet_transformers()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_name_or_path)
    except (OSError, ValueError) as error:
        local_hint = (
            f"'{model_name_or_path}' is not a directory with a config.json"
            if os.path.sep in model_name_or_path or model_name_or_path.startswith(".")
            else f"'{model_name_or_path}' could not be loaded from the Hugging Face Hub (offline, or no such model)"
        )
        raise ConfigError(
            f"--model: {local_hint}. Give a Hub model id that is reachable or cached, or a local "
            f"directory written by save_pretrained. ({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from None


def require_safetensors(model_dir: Path) -> None:
    """Refuse a model directory that holds pickle weights (pytorch_model.bin, *.pt, ...) and no safetensors.

    Unpickling runs code chosen by whoever wrote the file, so such weights are never read; the
    message says how to convert them on a machine where the file's source is trusted.
    """
    if any(model_dir.glob("*.safetensors")):
        return
    pickled = sorted(path.name for path in model_dir.iterdir() if path.name.endswith(_PICKLE_WEIGHT_SUFFIXES))
    if pickled:
        raise ConfigError(
            f"--model: {model_dir} holds pickle weights ({', '.join(pickled[:3])}) and no model.safetensors; "
            "bert-classify reads safetensors only, since unpickling can run code. If you trust the file's source, "
            "convert it once: python -c \"import sys; from transformers import AutoModelForSequenceClassification as M; "
            "M.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[1], safe_serialization=True)\" "
            f"{model_dir}"
        )


def max_sequence_length(model_config: Any) -> int:
    """The longest input the model's position embeddings can take."""
    limit = getattr(model_config, "max_position_embeddings", None) or 512
    if getattr(model_config, "model_type", "") in _POSITION_OFFSET_MODEL_TYPES:
        limit -= (getattr(model_config, "pad_token_id", 1) or 1) + 1
    return int(limit)


def load_tokenizer(model_name_or_path: str) -> Any:
    _quiet_transformers()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"--model: no tokenizer could be loaded from '{model_name_or_path}' "
            f"({type(error).__name__}: {str(error).splitlines()[0]}). The directory needs the tokenizer "
            "files that save_pretrained writes (tokenizer.json or vocab.txt)."
        ) from None
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"--model: the tokenizer of '{model_name_or_path}' has no padding token.")
    return tokenizer


def load_for_training(
    model_name_or_path: str, class_names: Sequence[str], freeze_encoder: bool = False, multi_label: bool = False
) -> Any:
    """A sequence-classification model with a fresh head of len(class_names) outputs.

    `multi_label` sets config.problem_type "multi_label_classification" (sigmoid per label, BCE), which
    plain transformers and our inference read; otherwise "single_label_classification" (softmax).
    """
    _quiet_transformers()
    from transformers import AutoModelForSequenceClassification

    id2label = dict(enumerate(class_names))
    label2id = {name: index for index, name in id2label.items()}
    model = AutoModelForSequenceClassification.from_pretrained(
        model_name_or_path,
        num_labels=len(class_names),
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
        use_safetensors=True,  # never unpickle: a Hub model without safetensors is refused
    )
    if freeze_encoder:
        freeze_all_but_head(model)
    return model


def set_output_bias_to_label_prior(model: Any, positive_fraction: Sequence[float]) -> bool:
    """Multi-label: start each output's bias at the log-odds of its label's share of training examples.

    A fresh head starts every sigmoid near 0.5, while most labels are absent from most examples; the
    first steps then push all logits down, through the encoder too, which can flatten what the
    encoder tells apart (on our DBpedia documents, MiniLM at its learning rate collapsed to predicting
    the label frequencies). Starting at the prior (as RetinaNet does for its rare classes) leaves only
    the informative part of the gradient. Returns False when the head has no bias of the right size.
    """
    import torch

    shares = torch.tensor(list(positive_fraction), dtype=torch.float64).clamp(1e-4, 1 - 1e-4)
    head = set(classification_head_parameter_names(model))
    parameters = dict(model.named_parameters())
    biases = [name for name in parameters if name in head and name.endswith("bias") and parameters[name].shape == shares.shape]
    if not biases:
        return False
    with torch.no_grad():
        parameters[biases[-1]].copy_(torch.log(shares / (1 - shares)).to(parameters[biases[-1]].dtype))
    return True


def classification_head_parameter_names(model: Any) -> list[str]:
    """Names of the parameters outside the pretrained encoder (the classification head)."""
    base_prefix = getattr(model, "base_model_prefix", "")
    return [name for name, _ in model.named_parameters() if not (base_prefix and name.startswith(base_prefix + "."))]


def freeze_all_but_head(model: Any) -> None:
    head = set(classification_head_parameter_names(model))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name in head


def build_tiny_model(
    output_dir: str | Path,
    texts: Sequence[str],
    class_names: Sequence[str] = ("negative", "positive"),
    *,
    vocab_size: int = 800,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_positions: int = 128,
    seed: int = 0,
    dropout: float = 0.1,
) -> Path:
    """Write a small random BERT and a WordPiece tokenizer trained on `texts` to `output_dir`."""
    _quiet_transformers()
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(list(texts), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False))
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece()
    tokenizer = BertTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_positions,
    )
    config = BertConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 4,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: index for index, name in enumerate(class_names)},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
