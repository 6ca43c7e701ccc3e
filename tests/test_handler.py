"""SageMaker handler: every content type in and out, every bad input, and the toolkit's 4xx mapping."""

from __future__ import annotations

import inspect
import json
import sys
import types
from pathlib import Path

import pytest

from bert_classify.inference import handler
from bert_classify.inference.codec import InferenceRequest, RequestError
from conftest import make_rows
from test_inference_predictor import fit_head

TEXTS = [content for _, _, content in make_rows(6, seed=9)]


@pytest.fixture(scope="module")
def model_dir(tiny_model_no_dropout_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_head(tiny_model_no_dropout_dir, tmp_path_factory.mktemp("handler-bert"))


@pytest.fixture(scope="module")
def model(model_dir: Path):
    return handler.model_fn(str(model_dir))


def invoke(model, body, content_type, accept="application/json"):
    data = handler.input_fn(body, content_type)
    prediction = handler.predict_fn(data, model)
    return handler.output_fn(prediction, accept)


def expected_labels(model, texts):
    return [item["label"] for item in model.predict(texts)]


@pytest.mark.parametrize(
    "body, content_type",
    [
        (json.dumps({"inputs": TEXTS}), "application/json"),
        (json.dumps(TEXTS), "application/json; charset=utf-8"),
        ("".join(json.dumps(text) + "\n" for text in TEXTS), "application/jsonlines"),
        ("".join(json.dumps({"inputs": text}) + "\n" for text in TEXTS), "application/x-jsonlines"),
        ("\n".join(TEXTS) + "\n", "text/csv"),
    ],
)
def test_each_content_type_gives_one_prediction_per_text_in_order(model, body, content_type) -> None:
    for payload in (body, body.encode("utf-8")):  # the toolkit passes str for UTF-8 types, bytes otherwise
        response, response_type = invoke(model, payload, content_type)
        assert response_type == "application/json"
        predictions = json.loads(response)
        assert [item["label"] for item in predictions] == expected_labels(model, TEXTS)
        assert all(set(item) == {"label", "score"} and 0 < item["score"] <= 1 for item in predictions)


def test_single_json_string_and_quoted_csv_field(model) -> None:
    response, _ = invoke(model, json.dumps(TEXTS[0]), "application/json")
    assert len(json.loads(response)) == 1
    response, _ = invoke(model, '"a text, with a comma\nand a newline"\nsecond text\n', "text/csv")
    assert len(json.loads(response)) == 2


def test_top_k_parameter_and_jsonlines_output(model) -> None:
    body = json.dumps({"inputs": TEXTS[:2], "parameters": {"top_k": 2}})
    response, response_type = invoke(model, body, "application/json", accept="application/jsonlines")
    assert response_type == "application/jsonlines"
    lines = [json.loads(line) for line in response.decode().splitlines()]
    assert len(lines) == 2 and all(len(line["top_k"]) == 2 for line in lines)
    assert [line["label"] for line in lines] == expected_labels(model, TEXTS[:2])


@pytest.mark.parametrize("accept", [None, "*/*", "application/*", "text/html, application/json;q=0.5"])
def test_lenient_accept_headers_give_json(model, accept) -> None:
    assert invoke(model, json.dumps(["x"]), "application/json", accept=accept)[1] == "application/json"


@pytest.mark.parametrize(
    "body, content_type, status, message",
    [
        (b'{"inputs": [', "application/json", 400, "not valid JSON"),
        (b'{"text": ["a"]}', "application/json", 400, '"inputs" field'),
        (b'{"inputs": ["a", 3]}', "application/json", 400, r"inputs\[1\]"),
        (b'{"inputs": []}', "application/json", 400, "no texts"),
        (b"[]", "application/json", 400, "no texts"),
        (b"", "text/csv", 400, "no texts"),
        (b"\n \n", "text/csv", 400, "no texts"),
        (b'{"inputs": "a", "parameters": {"top_k": 0}}', "application/json", 400, "top_k"),
        (b'{"inputs": "a", "parameters": {"top_k": true}}', "application/json", 400, "top_k"),
        (b'"a"\n{"nope": 1}\n', "application/jsonlines", 400, "line 2"),
        (b'"a"\nnot json\n', "application/jsonlines", 400, "line 2 is not valid JSON"),
        (b"\xff\xfe bad bytes", "text/csv", 400, "not valid UTF-8"),
        (b"<a/>", "application/xml", 415, "application/xml"),
        (b"a", "text/csv; charset=latin-1", 415, "charset"),
        (b"x" * (6 * 1024 * 1024 + 1), "text/csv", 413, "over the limit"),
        (b"a\n" * 1001, "text/csv", 413, "1001 texts"),
    ],
)
def test_bad_requests_raise_4xx_errors(body, content_type, status, message) -> None:
    with pytest.raises(RequestError, match=message) as caught:
        handler.input_fn(body, content_type)
    assert caught.value.status_code == status


def test_unsupported_accept_is_406(model) -> None:
    with pytest.raises(RequestError, match="text/html") as caught:
        handler.output_fn(model.predict(["x"]), "text/html")
    assert caught.value.status_code == 406


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERT_CLASSIFY_MAX_TEXTS", "2")
    with pytest.raises(RequestError, match="3 texts") as caught:
        handler.input_fn(b"a\nb\nc\n", "text/csv")
    assert caught.value.status_code == 413


def test_container_maps_request_errors_to_toolkit_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the container the toolkit answers BaseInferenceToolkitError with its status, else 500."""

    class GenericInferenceToolkitError(Exception):
        def __init__(self, status_code, message=None, phrase=None):
            super().__init__(message)
            self.status_code, self.message, self.phrase = status_code, message, phrase

    errors_module = types.ModuleType("sagemaker_inference.errors")
    errors_module.GenericInferenceToolkitError = GenericInferenceToolkitError
    monkeypatch.setitem(sys.modules, "sagemaker_inference", types.ModuleType("sagemaker_inference"))
    monkeypatch.setitem(sys.modules, "sagemaker_inference.errors", errors_module)
    with pytest.raises(GenericInferenceToolkitError) as caught:
        handler.input_fn(b"<a/>", "application/xml")
    assert (caught.value.status_code, caught.value.phrase) == (415, "Unsupported Media Type")
    assert "application/xml" in caught.value.message


def test_signatures_fit_the_toolkit_with_and_without_context() -> None:
    # The toolkit passes context only when the function takes one parameter more than the data.
    assert len(inspect.signature(handler.model_fn).parameters) == 2
    for function in (handler.input_fn, handler.predict_fn, handler.output_fn):
        assert len(inspect.signature(function).parameters) == 3


def test_predict_fn_refuses_raw_data(model) -> None:
    with pytest.raises(RequestError):
        handler.predict_fn(["not decoded"], model)
    assert handler.predict_fn(InferenceRequest(["x"], top_k=1), model)[0]["label"] in model.class_names


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,  # nesting deeper than the JSON decoder's recursion limit
        '{"inputs": ' + "9" * 5000 + "}",  # an integer past Python's digit limit
        '{"inputs": ["\\ud800 lone surrogate"]}',  # an unpaired surrogate: no tokenizer can encode it
        b'{"inputs": ["\xff\xfe"]}',  # not UTF-8
    ],
)
def test_hostile_bodies_are_400_not_500(body) -> None:
    with pytest.raises(RequestError) as caught:
        handler.input_fn(body, "application/json")
    assert caught.value.status_code == 400


def test_model_fn_warms_up_once_unless_switched_off(model_dir: Path, monkeypatch, caplog) -> None:
    calls: list[list[str]] = []
    original = handler.Classifier.predict

    def counting(self, texts, *args, **kwargs):
        calls.append(list(texts))
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(handler.Classifier, "predict", counting)
    with caplog.at_level("INFO", logger=handler.__name__):
        handler.model_fn(str(model_dir))
    assert calls == [handler.WARM_UP_TEXTS]
    assert any('"event": "warmed_up"' in record.getMessage() for record in caplog.records)
    monkeypatch.setenv("BERT_CLASSIFY_WARMUP", "0")
    handler.model_fn(str(model_dir))
    assert len(calls) == 1


class _MmsContext:
    """The part of MMS's Context that the Hugging Face toolkit hands to our functions."""

    def __init__(self) -> None:
        self.status: tuple[int, str] | None = None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status = (code, phrase)


@pytest.fixture
def under_hf_toolkit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, handler.HF_TOOLKIT_MODULE, types.ModuleType(handler.HF_TOOLKIT_MODULE))


def test_under_the_hf_toolkit_output_is_bytes_and_errors_carry_their_status(model, under_hf_toolkit) -> None:
    context = _MmsContext()
    body = handler.output_fn(handler.predict_fn(handler.input_fn(json.dumps(TEXTS), "application/json", context), model, context), "application/json", context)
    assert isinstance(body, bytes)  # the toolkit passes bytes through; a tuple became 503
    assert [item["label"] for item in json.loads(body)] == expected_labels(model, TEXTS)
    assert context.status is None

    failed = handler.input_fn(b"<a/>", "application/xml", context)  # the toolkit would turn a raise into 400
    assert isinstance(failed, handler.FailedRequest) and failed.status_code == 415
    body = handler.output_fn(handler.predict_fn(failed, model, context), "application/json", context)
    assert context.status == (415, "Unsupported Media Type")
    assert json.loads(body)["code"] == 415 and "application/xml" in json.loads(body)["message"]

    context = _MmsContext()
    handler.output_fn(model.predict(["x"]), "text/html", context)
    assert context.status == (406, "Not Acceptable")


def test_under_the_hf_toolkit_a_server_fault_is_500(model, under_hf_toolkit, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(model, "predict", broken)
    context = _MmsContext()
    result = handler.predict_fn(InferenceRequest(["x"], top_k=1), model, context)
    assert result == handler.FailedRequest(500, "prediction failed on the server; see the endpoint's log.")
    handler.output_fn(result, "application/json", context)
    assert context.status == (500, "Internal Server Error")
