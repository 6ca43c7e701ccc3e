"""Shared fixtures: a tiny BERT built locally (no download) and small data sets in the DBpedia layout."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_MODEL = SHARED / "models" / "minilm-l6-h384-uncased"
SHARED_DATA = SHARED / "data" / "dbpedia-10k"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CLASS_NAMES = ["Company", "Artist", "Animal"]
_WORDS = {
    "Company": ["company", "founded", "headquarters", "shares", "products", "corporation", "market"],
    "Artist": ["painter", "singer", "album", "gallery", "songs", "exhibition", "music"],
    "Animal": ["species", "genus", "habitat", "mammal", "feathers", "predator", "family"],
}


def make_rows(count: int, seed: int = 0) -> list[tuple[int, str, str]]:
    """(1-based class index, title, content) rows whose content is separable by vocabulary."""
    import random

    rng = random.Random(seed)
    rows = []
    for index in range(count):
        label = index % len(CLASS_NAMES)
        words = _WORDS[CLASS_NAMES[label]]
        length = rng.randint(3, 25)
        content = " ".join(rng.choice(words + ["the", "a", "of", "is"]) for _ in range(length))
        rows.append((label + 1, f"Title {index}", content))
    return rows


def write_dbpedia_csv(path: Path, rows: list[tuple[int, str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.csv (60 rows), val.csv (30 rows), classes.txt in the DBpedia layout."""
    directory = tmp_path_factory.mktemp("data")
    write_dbpedia_csv(directory / "train.csv", make_rows(60, seed=1))
    write_dbpedia_csv(directory / "val.csv", make_rows(30, seed=2))
    (directory / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT with a WordPiece vocabulary trained on the test vocabulary."""
    from bert_classify.modeling import build_tiny_model

    texts = [f"{title} {content}" for _, title, content in make_rows(200, seed=3)]
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"), texts, CLASS_NAMES)


@pytest.fixture(scope="session")
def tiny_model_no_dropout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with dropout off, for exact-equality comparisons between runs."""
    from bert_classify.modeling import build_tiny_model

    texts = [f"{title} {content}" for _, title, content in make_rows(200, seed=3)]
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert-nodrop"), texts, CLASS_NAMES, dropout=0.0)


def require_shared_model() -> Path:
    if not (SHARED_MODEL / "config.json").exists():
        pytest.skip(f"../shared model not present at {SHARED_MODEL}: integration test needs it")
    return SHARED_MODEL


def require_shared_data() -> Path:
    if not (SHARED_DATA / "train.csv").exists():
        pytest.skip(f"../shared data not present at {SHARED_DATA}: integration test needs it")
    return SHARED_DATA


@pytest.fixture
def aws_session(monkeypatch: pytest.MonkeyPatch):
    """An in-process AWS (moto) with fake credentials, and a session whose sent requests are recorded:
    `session.sent` (operation -> the last parameters sent; moto drops some fields when storing) and
    `session.sent_log` (every (operation, parameters) in order, SageMaker runtime calls included)."""
    import json

    import boto3
    import moto

    from bert_classify.sagemaker import aws

    region = "us-east-1"
    for variable, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
    }.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with moto.mock_aws():
        session = boto3.session.Session(region_name=region)
        session.sent = {}
        session.sent_log = []

        def record(params: dict, model: object, **_: object) -> None:
            sent = json.loads(json.dumps(params, default=str))
            session.sent[model.name] = sent
            session.sent_log.append((model.name, sent))

        session.events.register("provide-client-params.sagemaker.*", record)
        session.events.register("provide-client-params.sagemaker-runtime.*", record)
        monkeypatch.setattr(aws, "make_session", lambda region=None: session)
        yield session
