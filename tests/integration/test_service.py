"""The service in-process (its ASGI app under Starlette's TestClient): answers, errors, log, feedback, auth."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from payloads import bomb_png, truncated_wav
from safetensors.torch import load_file, save_file
from starlette.testclient import TestClient
from test_service_support import LABELS, TEMPERATURE, build_artifact, png, promoted_champion, running, tiny_state, wav

from mmfuse.inference.log import LOG_ENV, media_root, read_log
from mmfuse.inference.predictor import InputProblem, Predictor, RawSample
from mmfuse.preprocess.sample import preprocess_sample

MEDIA = {"image": ("digit.png", png(), "image/png"), "audio": ("clip.wav", wav(), "audio/wav")}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The service with auth off, shared by the tests that do not count log rows."""
    log = tmp_path_factory.mktemp("inference") / "log.sqlite"
    with running(log) as client:
        yield SimpleNamespace(client=client, log=log, tag=promoted_champion())


def predict(client: TestClient, **fields: Any) -> Any:
    files = {name: MEDIA[name] for name in ("image", "audio") if fields.get(name)}
    data = {"text": fields["text"]} if fields.get("text") is not None else {}
    return client.post("/predict", files=files or None, data=data)


def test_predict_with_all_modalities_answers_the_contract(service):
    response = predict(service.client, image=True, audio=True, text="one")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "request_id",
        "label",
        "confidence",
        "probabilities",
        "modalities_used",
        "modalities_set_aside",
        "modalities_ignored",
        "trust",
        "notes",
        "contributions",
        "driver",
        "model_version",
    }
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    assert body["model_version"] == service.tag
    assert list(body["probabilities"]) == list(LABELS)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["confidence"] == body["probabilities"][body["label"]]
    assert body["modalities_used"] == ["image", "audio", "text"] and body["modalities_ignored"] == []
    assert body["modalities_set_aside"] == [] and body["notes"] == []  # the test champion carries no trust
    shares = {m: c["share"] for m, c in body["contributions"].items()}
    assert set(shares) == {"image", "audio", "text"} and sum(shares.values()) == pytest.approx(1.0)
    assert body["driver"] == max(shares, key=shares.get)
    assert all(c["label"] in LABELS and 0 <= c["support"] <= 1 for c in body["contributions"].values())


@pytest.mark.parametrize(
    "subset", [s for n in (1, 2, 3) for s in combinations(("image", "audio", "text"), n)], ids="+".join
)
def test_every_non_empty_subset_is_answered(service, subset):
    response = predict(
        service.client, image="image" in subset, audio="audio" in subset, text="two" if "text" in subset else None
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["modalities_used"] == list(subset) and set(body["contributions"]) == set(subset)


def test_probabilities_are_the_calibrated_softmax_of_the_model(service, tmp_path):
    """Same preprocessing function as training, then softmax(logits / T) with T from calibration.json."""
    response = predict(service.client, image=True, text="one")
    artifact = build_artifact(tmp_path / "same")  # the champion's twin (same seed, same weights)
    predictor = Predictor(artifact, "twin")
    tensors = preprocess_sample(MEDIA["image"][1], None, "one", tiny_state())
    with torch.inference_mode():
        logits = predictor.model({k: v[None] for k, v in tensors.items()})[0]
    expected = torch.softmax(logits / TEMPERATURE, dim=0).tolist()
    assert list(response.json()["probabilities"].values()) == pytest.approx(expected, abs=1e-6)


def test_a_numeric_text_stays_text_and_a_json_string_is_decoded(service):
    assert predict(service.client, text="5").status_code == 200
    plain, encoded = predict(service.client, text="one"), predict(service.client, text=json.dumps("one"))
    assert plain.json()["probabilities"] == encoded.json()["probabilities"]


def test_a_url_encoded_form_carries_text(service):
    response = service.client.post(
        "/predict", content=b"text=one", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200, response.text


def browser_form(text: str | None) -> dict[str, Any]:
    """What a browser posts for a form whose image input was left empty (httpx cannot send filename="")."""
    parts = [
        b'--b\r\nContent-Disposition: form-data; name="image"; filename=""\r\nContent-Type: application/octet-stream\r\n\r\n\r\n'  # noqa: E501
    ]
    if text is not None:
        parts.append(b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\n' + text.encode() + b"\r\n")
    return {"content": b"".join(parts) + b"--b--\r\n", "headers": {"content-type": "multipart/form-data; boundary=b"}}


def test_an_empty_file_input_from_a_browser_counts_as_absent(service):
    response = service.client.post("/predict", **browser_form("one"))
    assert response.status_code == 200, response.text
    assert response.json()["modalities_used"] == ["text"]


def long_wav() -> bytes:
    return wav(seconds=3.0)  # the tiny champion's limit is 2 s


def big_png() -> bytes:
    return png(size=400)  # random pixels: ~160 KB, over the tiny champion's 50 KB


BAD_PREDICTS: dict[str, tuple[dict[str, Any], int, tuple[Any, ...]]] = {
    "no modality": ({"files": {"nothing": ("", b"", "text/plain")}}, 400, ("nothing",)),
    "empty form": ({"content": b"", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 400, ("body",)),
    "only an empty browser file input": (browser_form(None), 400, ("body",)),
    "undecodable image": ({"files": {"image": ("x.png", b"\x89PNG not really", "image/png")}}, 422, ("image",)),
    "undecodable audio": ({"files": {"audio": ("x.wav", b"RIFF....WAVEjunk", "audio/wav")}}, 422, ("audio",)),
    "audio bytes sent as the image": (
        {"files": {"image": ("x.png", wav(), "application/octet-stream")}},
        422,
        ("image",),
    ),
    "image bytes sent as the audio": (
        {"files": {"audio": ("x.wav", png(), "application/octet-stream")}},
        422,
        ("audio",),
    ),
    "an audio file declared in the image field": ({"files": {"image": ("x.wav", wav(), "audio/wav")}}, 415, ("image",)),
    "an image file declared in the audio field": ({"files": {"audio": ("x.png", png(), "image/png")}}, 415, ("audio",)),
    "empty image file": ({"files": {"image": ("x.png", b"", "image/png")}}, 422, ("image",)),
    "audio over the length limit": ({"files": {"audio": ("x.wav", long_wav(), "audio/wav")}}, 422, ("audio",)),
    "image over the size limit": ({"files": {"image": ("x.png", big_png(), "image/png")}}, 422, ("image",)),
    "a decompression bomb": ({"files": {"image": ("x.png", bomb_png(), "image/png")}}, 422, ("image",)),
    "truncated audio": ({"files": {"audio": ("x.wav", truncated_wav(), "audio/wav")}}, 422, ("audio",)),
    "audio of one sample": ({"files": {"audio": ("x.wav", wav(seconds=1 / 8000), "audio/wav")}}, 422, ("audio",)),
    "a text of only whitespace": ({"data": {"text": " \t\n "}}, 400, ("body",)),
    "a text of only punctuation": ({"data": {"text": "?!"}}, 400, ("body",)),
    "a text of a zero-width space": ({"data": {"text": "\u200b"}}, 400, ("body",)),
    "text over the length limit": ({"data": {"text": "x" * 101}}, 422, ("text",)),
    "text over the field size limit": ({"data": {"text": "x" * 70_000}}, 400, ("text",)),
    "image as a plain field": ({"data": {"image": "not a file", "text": "one"}}, 400, ("image",)),
    "unknown field": ({"data": {"text": "one", "colour": "red"}}, 400, ("colour",)),
    "repeated field": ({"files": [("image", MEDIA["image"]), ("image", MEDIA["image"])]}, 400, ("image",)),
    "text not UTF-8": ({"files": {"text": ("t.txt", b"\xff\xfe", "text/plain")}}, 400, ("text",)),
    "JSON body": ({"json": {"text": "one"}}, 415, ("header", "content-type")),
    "no content type": ({"content": b"text=one"}, 415, ("header", "content-type")),
    "multipart without boundary": (
        {"content": b"x", "headers": {"content-type": "multipart/form-data"}},
        400,
        ("body",),
    ),
    "truncated multipart": (
        {
            "content": b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\none',
            "headers": {"content-type": "multipart/form-data; boundary=b"},
        },
        400,
        ("body",),
    ),
}


def assert_names_the_field(response: Any, status: int, loc: tuple[Any, ...]) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and isinstance(body["error"], str) and body["error"]
    assert any(tuple(item["loc"][: len(loc)]) == loc for item in body["detail"]), body
    assert str(loc[-1]) in body["error"]


@pytest.mark.parametrize("case", list(BAD_PREDICTS), ids=list(BAD_PREDICTS))
def test_bad_predict_input_gets_a_4xx_json_naming_the_field(service, case):
    kwargs, status, loc = BAD_PREDICTS[case]
    assert_names_the_field(service.client.post("/predict", **kwargs), status, loc)


def b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


BAD_BATCHES: dict[str, tuple[Any, int, tuple[Any, ...]]] = {
    "no samples": ({"samples": []}, 400, ("samples",)),
    "samples not a list": ({"samples": "one"}, 400, ("samples",)),
    "too many samples": ({"samples": [{"text": "one"}] * 65}, 400, ("samples",)),
    "missing samples": ({}, 400, ("samples",)),
    "unknown key": ({"samples": [{"text": "one", "video": "x"}]}, 400, ("samples", 0, "video")),
    "text not a string": ({"samples": [{"text": 5}]}, 400, ("samples", 0, "text")),
    "image not base64": ({"samples": [{"image": "%%%"}]}, 400, ("samples", 0, "image")),
    "a sample with no modality": ({"samples": [{"text": "one"}, {}]}, 400, ("samples", 1, "body")),
    "a sample of only whitespace text": ({"samples": [{"text": "   "}]}, 400, ("samples", 0, "body")),
    "a sample whose text normalises to nothing": ({"samples": [{"text": "??"}]}, 400, ("samples", 0, "body")),
    "a decompression bomb": ({"samples": [{"image": b64(bomb_png())}]}, 422, ("samples", 0, "image")),
    "truncated audio": ({"samples": [{"audio": b64(truncated_wav())}]}, 422, ("samples", 0, "audio")),
    "an undecodable image": ({"samples": [{"text": "one"}, {"image": b64(b"nope")}]}, 422, ("samples", 1, "image")),
    "audio over the length limit": ({"samples": [{"audio": b64(long_wav())}]}, 422, ("samples", 0, "audio")),
    "not JSON": (b"{samples", 400, ("body",)),
    "not an object": ([1, 2], 400, ("body",)),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES), ids=list(BAD_BATCHES))
def test_bad_batch_input_gets_a_4xx_json_naming_the_field(service, case):
    body, status, loc = BAD_BATCHES[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = service.client.post("/predict_batch", content=content, headers={"content-type": "application/json"})
    assert_names_the_field(response, status, loc)


def test_predict_batch_answers_each_sample_in_order(service):
    samples = [{"text": "one"}, {"image": b64(png())}, {"audio": b64(wav()), "text": "two"}]
    response = service.client.post("/predict_batch", json={"samples": samples})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["modalities_used"] for p in predictions] == [["text"], ["image"], ["audio", "text"]]
    assert len({p["request_id"] for p in predictions}) == 3
    single = predict(service.client, text="one").json()
    assert predictions[0]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-6)


def test_each_prediction_is_logged_once_with_its_features(tmp_path):
    log = tmp_path / "log.sqlite"
    with running(log) as client:
        body = predict(client, image=True, text="one").json()
        batch = client.post("/predict_batch", json={"samples": [{"text": "one"}, {"audio": b64(wav())}]}).json()
        client.post("/predict", files={"image": ("x.png", b"nope", "image/png")})  # refused: not logged
        client.post("/predict", data={})  # refused: not logged
    frame = read_log(log)  # the shutdown wrote everything queued
    assert frame["request_id"].tolist() == [body["request_id"], *(p["request_id"] for p in batch["predictions"])]
    assert frame["endpoint"].tolist() == ["predict", "predict_batch", "predict_batch"]
    row = frame.iloc[0]
    assert (row["has_image"], row["has_audio"], row["has_text"]) == (True, False, True)
    assert row["prediction"] == body["label"] and row["confidence"] == pytest.approx(body["confidence"])
    assert row["probabilities"] == pytest.approx(body["probabilities"])
    assert row["model_version"] == promoted_champion()
    assert row["image_bytes"] == len(MEDIA["image"][1]) and row["text_chars"] == 3 and row["text_tokens"] == 3
    assert row["embedding"].shape == (3 * 8,)  # 3 modalities x embed_dim 8
    assert row["latency_ms"] > 0


def test_two_apps_in_one_process_each_answer_with_their_own_instance(service, tmp_path):
    """BentoML's current service is process-wide; each app must still use the instance its own start-up made."""
    other_log = tmp_path / "other.sqlite"
    with running(other_log) as other:
        theirs = predict(other, text="one").json()["request_id"]
        mine = predict(service.client, text="one").json()["request_id"]
    logged = set(read_log(other_log)["request_id"])
    assert theirs in logged and mine not in logged
    assert predict(service.client, text="one").status_code == 200  # the other app's shutdown closed only its own


def test_feedback_is_stored_beside_the_request(service):
    body = predict(service.client, text="two").json()
    response = service.client.post("/feedback", json={"request_id": body["request_id"], "label": "two"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "request_id": body["request_id"],
        "label": "two",
        "prediction": body["label"],
        "correct": body["label"] == "two",
    }
    row = read_log(service.log).set_index("request_id").loc[body["request_id"]]
    assert row["true_label"] == "two" and row["feedback_time"] is not None


BAD_FEEDBACK: dict[str, tuple[dict[str, Any], int, tuple[Any, ...]]] = {
    "unknown request": ({"request_id": "0" * 32, "label": "one"}, 404, ("request_id",)),
    "malformed request id": ({"request_id": "../../etc", "label": "one"}, 400, ("request_id",)),
    "unknown label": ({"request_id": "0" * 32, "label": "seven"}, 400, ("label",)),
    "missing label": ({"request_id": "0" * 32}, 400, ("label",)),
    "label not a string": ({"request_id": "0" * 32, "label": 1}, 400, ("label",)),
    "request id one character short": ({"request_id": "0" * 31, "label": "one"}, 400, ("request_id",)),
    "label over 256 characters": ({"request_id": "0" * 32, "label": "x" * 257}, 400, ("label",)),
    "unknown key": ({"request_id": "0" * 32, "label": "one", "note": "x"}, 400, ("note",)),
}


@pytest.mark.parametrize("case", list(BAD_FEEDBACK), ids=list(BAD_FEEDBACK))
def test_bad_feedback_gets_a_4xx_json_naming_the_field(service, case):
    body, status, loc = BAD_FEEDBACK[case]
    assert_names_the_field(service.client.post("/feedback", json=body), status, loc)


def test_the_service_stays_up_after_bad_input(service):
    for kwargs, _, _ in BAD_PREDICTS.values():
        service.client.post("/predict", **kwargs)
    for body, _, _ in BAD_BATCHES.values():
        service.client.post("/predict_batch", content=body if isinstance(body, bytes) else json.dumps(body).encode())
    for body, _, _ in BAD_FEEDBACK.values():
        service.client.post("/feedback", json=body)
    assert len(BAD_PREDICTS) + len(BAD_BATCHES) + len(BAD_FEEDBACK) >= 40  # the malformed-input corpus
    assert service.client.get("/readyz").status_code == 200
    assert predict(service.client, image=True, audio=True, text="one").status_code == 200


def test_inputs_just_inside_the_limits_are_answered(service):
    """Each limit's other side: one character, one sample under it is still served."""
    assert predict(service.client, text="x" * 100).status_code == 200  # max_chars 100 (101 is refused)
    batch = service.client.post("/predict_batch", json={"samples": [{"text": "one"}] * 64})  # 65 is refused
    assert batch.status_code == 200 and len(batch.json()["predictions"]) == 64
    assert predict(service.client, text="?a").status_code == 200  # punctuation beside a letter is a text


def test_health_openapi_and_demo_are_served(service):
    for path in ("/livez", "/readyz"):
        assert service.client.get(path).status_code == 200
    spec = service.client.get("/docs.json").json()
    assert {"/predict", "/predict_batch", "/feedback"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    for path in ("/docs", "/"):  # our reference page, in place of BentoML's Swagger UI page
        docs = service.client.get(path)
        assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
        assert all(f"<code>{route}</code>" in docs.text for route in ("/predict", "/predict_batch", "/feedback"))
        assert 'href="docs.json"' in docs.text and "<script" not in docs.text
        assert "googletagmanager" not in docs.text, "the OpenAPI page must not phone home"
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", docs.text), (
            "the docs page must not load from elsewhere"
        )
    page = service.client.get("/demo/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text), "the demo page must not load from a CDN"
    assert service.client.get("/demo", follow_redirects=False).headers["location"].endswith("/demo/")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A second app instance of the service, started with MMFUSE_API_TOKEN set."""
    with running(tmp_path_factory.mktemp("guarded") / "log.sqlite", token="s3cret-token") as client:
        yield client


def test_auth_is_off_by_default(service):
    assert predict(service.client, text="one").status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/predict/", "/predict_batch", "/feedback"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic czNjcmV0LXRva2Vu", "s3cret-token"])
def test_with_a_token_set_the_api_needs_it(guarded, path, authorization):
    headers = {"authorization": authorization} if authorization else {}
    response = guarded.post(path, data={"text": "one"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["detail"][0]["loc"] == ["header", "authorization"]


def test_with_a_token_set_the_right_token_passes_and_health_stays_open(guarded):
    ok = guarded.post("/predict", data={"text": "one"}, headers={"authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200, ok.text
    for path in ("/livez", "/readyz", "/docs.json", "/demo/"):
        assert guarded.get(path).status_code == 200, path


def test_a_model_without_a_modality_names_it(tmp_path):
    predictor = Predictor(build_artifact(tmp_path / "image-audio", ("image", "audio")), "pair")
    with pytest.raises(InputProblem) as problem:
        predictor.prepare(RawSample(text="one"))
    assert problem.value.field == "text" and problem.value.kind == "unsupported"
    prepared = predictor.prepare(RawSample(image=png(), text="one"))
    assert prepared.used == ("image",) and prepared.ignored == ("text",)


def test_serving_preprocesses_with_the_training_function(tmp_path):
    predictor = Predictor(build_artifact(tmp_path / "model"), "v")
    prepared = predictor.prepare(RawSample(png(), wav(), "One!"))
    expected = preprocess_sample(png(), wav(), "One!", tiny_state())
    assert all(torch.equal(prepared.tensors[k], expected[k]) for k in expected)


def test_a_bad_calibration_file_is_refused(tmp_path):
    artifact = build_artifact(tmp_path / "model")
    (artifact / "calibration.json").write_text(json.dumps({"temperature": 0}))
    with pytest.raises(Exception, match="temperature"):
        Predictor(artifact, "v")
    (artifact / "calibration.json").unlink()
    assert Predictor(artifact, "v").temperature == 1.0


def test_a_missing_champion_is_a_clear_error(monkeypatch, tmp_path):
    from mmfuse.inference import registry
    from mmfuse.serving import serve

    monkeypatch.setattr(registry, "champion", lambda: None)
    with pytest.raises(registry.RegistryError, match="no champion"):
        serve("127.0.0.1", 0)


def test_log_path_defaults_under_the_working_dir(monkeypatch):
    from mmfuse.inference.log import log_path

    monkeypatch.delenv(LOG_ENV, raising=False)
    assert log_path() == Path("data/inference/log.sqlite")


def test_a_model_answering_nan_gets_a_500_naming_the_model_never_a_nan(tmp_path):
    artifact = build_artifact(tmp_path / "nan")
    weights = load_file(str(artifact / "model.safetensors"))
    head = "head.classifier.3.weight"  # the fusion head's last layer
    weights[head] = torch.full_like(weights[head], float("nan"))  # a diverged or corrupt champion
    save_file(weights, str(artifact / "model.safetensors"))
    with running(tmp_path / "log.sqlite", champion=artifact) as client:
        response = predict(client, image=True, audio=True, text="one")
        assert response.status_code == 500, response.text
        body = response.json()
        assert body["detail"][0]["loc"] == ["model"] and "non-finite probabilities" in body["error"]
        assert "NaN" not in response.text and client.get("/livez").status_code == 200
    promoted_champion()  # the tiny champion again, for the tests after this one


def test_a_request_that_opts_in_is_captured_and_one_that_does_not_is_not(tmp_path):
    log = tmp_path / "log.sqlite"
    with running(log) as client:
        kept = client.post(
            "/predict", files={"image": MEDIA["image"]}, data={"text": "one"}, headers={"X-MMFuse-Capture": "true"}
        ).json()
        batch = client.post(
            "/predict_batch", json={"samples": [{"audio": b64(wav())}]}, headers={"X-MMFuse-Capture": "1"}
        ).json()
        plain = predict(client, image=True, text="two").json()
        refused = client.post("/predict", data={"text": "one"}, headers={"X-MMFuse-Capture": "maybe"})
        assert_names_the_field(refused, 400, ("header", "x-mmfuse-capture"))
    with sqlite3.connect(log) as conn:
        rows = {r[0]: r[1:] for r in conn.execute("SELECT request_id, image, audio, text FROM captured")}
    assert set(rows) == {kept["request_id"], batch["predictions"][0]["request_id"]} and plain["request_id"] not in rows
    image, audio, text = rows[kept["request_id"]]
    assert text == "one" and audio is None
    assert (media_root(log) / image[:2] / image).read_bytes() == MEDIA["image"][1]  # the raw upload, byte for byte
    assert (media_root(log) / rows[batch["predictions"][0]["request_id"]][1][:2]).is_dir()
