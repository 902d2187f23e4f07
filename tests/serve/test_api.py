"""``pleura serve``'s API through FastAPI's TestClient: a simulated clip, an image, a DICOM, a bad file, an oversized
file, a photograph (out of distribution), concurrent requests, the security rules and the exam view."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image
from typer.testing import CliRunner

from pleura.cli import app as cli
from pleura.data.synthetic import write_clip, write_dicom
from pleura.infer.predictor import Predictor
from pleura.models import PRETRAINED, pretrained
from pleura.serve import ServeConfig, create_app
from pleura.serve.exam import score_predictions
from pleura.serve.uploads import UploadError, display_name, receive_upload
from pleura.simulate.writer import simulate_clip

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
fastapi_testclient = pytest.importorskip("fastapi.testclient")
BASE = "http://127.0.0.1"  # the app answers loopback hosts only (DNS rebinding), so not TestClient's "testserver"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A simulated 12-frame clip (MP4), one of its frames (PNG), the clip as DICOM, a photograph, a text file."""
    root = tmp_path_factory.mktemp("serve-media")
    _, frames = simulate_clip(3, 0, "covid", "curvilinear", 128, 12)
    images = np.stack([f.image for f in frames])
    write_clip(root / "clip.mp4", images, fps=10)
    Image.fromarray(images[0]).save(root / "frame.png")
    write_dicom(root / "clip.dcm", images, FrameTime=100.0)
    Image.open(cbook.get_sample_data("grace_hopper.jpg")).save(root / "photo.jpg")
    (root / "notes.mp4").write_text("these are notes, not a clip\n")
    return {p.stem if p.suffix != ".dcm" else "dicom": p for p in root.iterdir()}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The shipped default model, loaded once for every app of this module."""
    return Predictor(pretrained())


@pytest.fixture
def client(predictor: Predictor) -> Iterator[fastapi_testclient.TestClient]:
    """A client of an app with the default settings."""
    app = create_app(ServeConfig(model=predictor.path), predictor=predictor)
    with fastapi_testclient.TestClient(app, base_url=BASE) as c:
        yield c


def _post(client: fastapi_testclient.TestClient, path: Path, name: str | None = None, **kw: object):
    with open(path, "rb") as fh:
        return client.post("/api/predict", files={"file": (name or path.name, fh, "application/octet-stream")}, **kw)


def _store(client: fastapi_testclient.TestClient):
    return client.app.state.serve["store"]


def test_clip_answers_what_predict_writes(client, media: dict[str, Path], tmp_path: Path) -> None:
    res = _post(client, media["clip"], name="../../etc/exam R3.mp4")
    assert res.status_code == 200, res.text
    doc, rid = res.json(), res.headers["X-Pleura-Result"]
    # the same document pleura predict writes for the same file with the same model (exact: same engine)
    out = tmp_path / "pred"
    cli_res = CliRunner().invoke(cli, ["predict", str(media["clip"]), "--out", str(out), "--no-video"])
    assert cli_res.exit_code == 0, cli_res.output
    expected = json.loads((out / "predictions.json").read_text())
    assert doc["class_names"] == expected["class_names"] and doc["temperature"] == expected["temperature"]
    assert doc["model"] == "pocus-foundation-w16-128.safetensors"  # the file name: no server path in an answer
    assert doc["files"][0]["path"] == "exam R3.mp4"  # the client's name is text only, its folders dropped
    assert {**doc["files"][0], "path": None} == {**expected["files"][0], "path": None}
    assert len(doc["files"][0]["frames"]) == 12 and sum(doc["files"][0]["probabilities"].values()) == pytest.approx(1)

    files = client.get(f"/api/results/{rid}").json()["files"]
    assert {"predictions.json", "clips.csv", "frames.csv", "annotated.mp4", "figure.png", "masks.zip"} <= set(files)
    assert client.get(files["predictions.json"]).json() == doc
    csv_text = client.get(files["clips.csv"]).text
    assert csv_text.startswith("file,diagnosis,") and "exam R3.mp4" in csv_text
    video = client.get(files["annotated.mp4"] + "?download=true")
    assert video.headers["content-type"] == "video/mp4" and "attachment" in video.headers["content-disposition"]
    with av.open(io.BytesIO(video.content)) as box:
        assert sum(1 for _ in box.decode(video=0)) == 12
    with zipfile.ZipFile(io.BytesIO(client.get(files["masks.zip"]).content)) as z:
        pngs = [n for n in z.namelist() if n.endswith(".png")]
        assert len(pngs) == 12 and json.loads(z.read("labels.json"))["schema"] == _default_schema()
        assert Image.open(io.BytesIO(z.read(pngs[0]))).size == (128, 128)
    player = client.get(files["player.json"]).json()
    assert player["count"] == 12 and len(client.get(files["labels.bin"]).content) == 12 * 128 * 128
    cams = np.frombuffer(client.get(files["cam.bin"]).content, np.uint8)
    assert cams.max() == 255  # each Grad-CAM is normalised to its peak

    # the upload itself is gone once answered; the results sit in the private 0700 folder
    store = _store(client)
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert not list(store.root.rglob("input")) and (store.root / rid / "out" / "predictions.json").is_file()


@pytest.mark.parametrize("kind, frames", [("frame", 1), ("dicom", 12)])
def test_image_and_dicom(client, media: dict[str, Path], kind: str, frames: int) -> None:
    res = _post(client, media[kind])
    assert res.status_code == 200, res.text
    f = res.json()["files"][0]
    assert len(f["frames"]) == frames and f["path"] == media[kind].name
    files = client.get(f"/api/results/{res.headers['X-Pleura-Result']}").json()["files"]
    assert ("annotated.mp4" in files) == (frames > 1) and "figure.png" in files


def test_tta_answers_what_predict_tta_writes(predictor: Predictor, media: dict[str, Path], tmp_path: Path) -> None:
    """``serve --tta`` (``ServeConfig.tta``) predicts as ``predict --tta`` does, and says so; without it, not."""
    app = create_app(ServeConfig(model=predictor.path, tta=True))
    with fastapi_testclient.TestClient(app, base_url=BASE) as c:
        doc = _post(c, media["frame"]).json()
    out = tmp_path / "pred"
    res = CliRunner().invoke(cli, ["predict", str(media["frame"]), "--tta", "--out", str(out)])
    assert res.exit_code == 0, res.output
    want = json.loads((out / "predictions.json").read_text())
    assert doc["tta"] is True and want["tta"] is True
    got_p, want_p = doc["files"][0]["probabilities"], want["files"][0]["probabilities"]
    assert got_p == pytest.approx(want_p, abs=1e-6)
    assert got_p != pytest.approx(predictor.predict(media["frame"]).probabilities, abs=1e-6)  # the mirror counted


def test_ood_warn_answers_a_diagnosis_where_every_frame_is_out_of_distribution(predictor: Predictor, tmp_path: Path):
    """``serve --ood warn`` (``ServeConfig.ood``) gives a photograph the diagnosis ``predict --ood warn`` gives it,
    with every frame flagged; by default it gets none; an unknown policy is refused when the app is made."""
    from sklearn.datasets import load_sample_image

    photo = tmp_path / "flower.png"
    Image.fromarray(load_sample_image("flower.jpg")).save(photo)
    with fastapi_testclient.TestClient(create_app(ServeConfig(model=predictor.path, ood="warn")), base_url=BASE) as c:
        (warned,) = _post(c, photo).json()["files"]
    with fastapi_testclient.TestClient(create_app(ServeConfig(model=predictor.path)), base_url=BASE) as c:
        (withheld,) = _post(c, photo).json()["files"]
    assert withheld["diagnosis"] is None and warned["ood_frames"] == len(warned["frames"]) == 1
    assert warned["diagnosis"] == Predictor(predictor.path, ood_policy="warn").predict(photo).diagnosis is not None
    with pytest.raises(ValueError, match="unknown OOD policy 'off'"):
        create_app(ServeConfig(model=predictor.path, ood="off"))


def test_raw_body_upload(client, media: dict[str, Path]) -> None:
    body = media["frame"].read_bytes()
    res = client.post("/api/predict?name=scan.png", content=body, headers={"Content-Type": "application/octet-stream"})
    assert res.status_code == 200 and res.json()["files"][0]["path"] == "scan.png"


def test_photo_is_out_of_distribution(client, media: dict[str, Path]) -> None:
    res = _post(client, media["photo"])
    assert res.status_code == 200, res.text
    f = res.json()["files"][0]
    assert f["frames"][0]["ood"] is True and f["ood_frames"] == 1
    assert f["diagnosis"] is None  # its only frame is out of distribution: no diagnosis, which the page says plainly


def test_bad_files_get_one_line_and_the_server_stays_up(client, media: dict[str, Path], tmp_path: Path) -> None:
    res = _post(client, media["notes"])
    assert res.status_code == 415
    message = res.json()["error"]
    assert message.startswith("notes.mp4: not an image or clip") and "\n" not in message
    assert str(_store(client).root) not in message  # the server's folders are never shown
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    res = _post(client, broken)
    assert res.status_code in (415, 422) and res.json()["error"].startswith("broken.mp4: ")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert _post(client, empty).status_code == 400
    no_file = client.post("/api/predict", files={"note": (None, "text")})  # a multipart form without a file
    assert no_file.status_code == 400 and "no file" in no_file.json()["error"]
    assert _post(client, media["frame"]).status_code == 200  # still serving
    assert not list(_store(client).root.rglob("input"))  # no upload left behind by the failures


@pytest.mark.parametrize("cap_mb", [0.1, 0.19])  # the 197 kB DICOM: refused from its Content-Length, or as it streams
def test_oversized_upload_is_refused(predictor: Predictor, media: dict[str, Path], cap_mb: float) -> None:
    assert media["dicom"].stat().st_size > cap_mb * 1e6 > media["clip"].stat().st_size
    cfg = ServeConfig(model=predictor.path, max_upload_mb=cap_mb)
    with fastapi_testclient.TestClient(create_app(cfg, predictor=predictor), base_url=BASE) as c:
        res = _post(c, media["dicom"])
        assert res.status_code == 413 and f"upload limit of {cap_mb:g} MB" in res.json()["error"]
        assert len(_store(c)) == 0 and not any(_store(c).root.iterdir())  # the partial upload is deleted
        assert _post(c, media["clip"]).status_code == 200  # a smaller file still passes


def test_the_cap_holds_while_streaming(tmp_path: Path) -> None:
    async def body():  # no Content-Length: the cap is counted as bytes arrive
        for _ in range(10):
            yield b"x" * 1000

    with pytest.raises(UploadError) as e:
        asyncio.run(receive_upload("application/octet-stream", None, body(), tmp_path / "f", 5000, "a.bin"))
    assert e.value.status == 413
    assert display_name("C:\\Users\\x\\..\\scan\x00.png") == "scan.png" and display_name("") == "upload"


def test_concurrent_requests_get_200_or_503(predictor: Predictor, media: dict[str, Path]) -> None:
    cfg = ServeConfig(model=predictor.path, workers=1, queue=1)
    with fastapi_testclient.TestClient(create_app(cfg, predictor=predictor), base_url=BASE) as c:
        answers: list = []

        def one() -> None:
            answers.append(_post(c, media["clip"]))

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        codes = sorted(a.status_code for a in answers)
        assert len(codes) == 6 and set(codes) <= {200, 503} and 200 in codes, codes
        for a in answers:
            if a.status_code == 503:
                assert int(a.headers["Retry-After"]) >= 1 and "busy" in a.json()["error"]
            else:
                assert len(a.json()["files"][0]["frames"]) == 12
        # a full queue answers 503 at once, without reading the upload
        pool = c.app.state.serve["pool"]
        for _ in range(pool.capacity):
            pool.acquire()
        try:
            res = _post(c, media["frame"])
            assert res.status_code == 503 and int(res.headers["Retry-After"]) >= 1
        finally:
            for _ in range(pool.capacity):
                pool.release()
        assert _post(c, media["frame"]).status_code == 200
        assert pool.in_flight == 0


def test_security_headers_and_no_path_from_the_client(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: nothing is fetched from elsewhere
    for path in ("/static/app.js", "/static/app.css"):
        assert client.get(path).status_code == 200
    for path in ("/static/..%2F__init__.py", "/static/../app.py", "/api/results/..%2F..%2Fetc/passwd",
                 "/api/results/AAAAAAAAAAAA/..%2Fin%2Finput", "/docs"):  # fmt: skip
        assert client.get(path).status_code == 404, path
    assert client.get("/", headers={"Host": "evil.example:8000"}).status_code == 403  # DNS rebinding
    res = client.post("/api/predict", files={"file": ("a.png", b"x")}, headers={"Origin": "http://evil.example"})
    assert res.status_code == 403  # a cross-site form post
    assert "Not a medical device" in page.text and 'href="/model-card"' in page.text
    assert "Not a medical device" in client.get("/model-card").text


def test_models_list(client) -> None:
    doc = client.get("/api/models").json()
    assert doc["loaded"]["name"] == "pocus-foundation-w16-128" and doc["loaded"]["ood_detector"] is True
    assert [m["name"] for m in doc["models"]] == list(PRETRAINED) and sum(m["loaded"] for m in doc["models"]) == 1
    assert doc["limits"]["max_upload_mb"] == 500 and len(doc["zones"]["14"]) == 14 and len(doc["zones"]["12"]) == 12
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]


def test_progress_and_expiry(predictor: Predictor, media: dict[str, Path]) -> None:
    cfg = ServeConfig(model=predictor.path, keep_s=0.05)
    with fastapi_testclient.TestClient(create_app(cfg, predictor=predictor), base_url=BASE) as c:
        res = _post(c, media["clip"], params={"ticket": "page-ticket-0001"})
        progress = c.get("/api/progress/page-ticket-0001").json()
        assert progress["stage"] == "done" and progress["frames"] == 12 and progress["expected"] == 12
        rid = res.headers["X-Pleura-Result"]
        root = _store(c).root
        assert (root / rid).is_dir()
        time.sleep(0.3)  # the sweeper runs every keep_s / 4 here
        _store(c).sweep()
        assert c.get(f"/api/results/{rid}").status_code == 404 and not (root / rid).exists()
    assert not root.exists()  # everything goes when the server stops


def test_exam_is_scored_as_pleura_score_scores_it(client, media: dict[str, Path], tmp_path: Path) -> None:
    rids = {z: _post(client, media[k]).headers["X-Pleura-Result"] for z, k in (("R1", "clip"), ("L4", "dicom"))}
    res = client.post("/api/exam", json={"patient": "case 7", "scheme": "12", "zones": rids})
    assert res.status_code == 200, res.text
    exam = res.json()
    assert exam["scheme"] == "12" and len(exam["zones"]) == 12 and exam["max_total"] == 36
    zones = {z["zone"]: z for z in exam["zones"]}
    assert zones["R1"]["file"] == "clip.mp4" and zones["L4"]["file"] == "clip.dcm"
    assert zones["R2"]["status"] == "missing"
    # the same zones scored by pleura score on the same clips, named by zone
    folder = tmp_path / "exam"
    folder.mkdir()
    (folder / "R1.mp4").write_bytes(media["clip"].read_bytes())
    (folder / "L4.dcm").write_bytes(media["dicom"].read_bytes())
    res_cli = CliRunner().invoke(cli, ["score", str(folder), "--scheme", "12", "--out", str(tmp_path / "score")])
    expected = {z["zone"]: z for z in json.loads((tmp_path / "score" / "score.json").read_text())["zones"]}
    assert res_cli.exit_code in (0, 1), res_cli.output  # 1: no zone could be scored (no pleural line found)
    for zone in ("R1", "L4", "R2"):
        assert (zones[zone]["score"], zones[zone]["rule"], zones[zone]["status"]) == (
            expected[zone]["score"], expected[zone]["rule"], expected[zone]["status"])  # fmt: skip
    assert exam["total"] == json.loads((tmp_path / "score" / "score.json").read_text())["total"]
    report = client.get(exam["files"]["report.html"])
    assert "case 7" in report.text and "not a medical device" in report.text and "data:image/png;base64," in report.text
    assert "script" not in report.headers["Content-Security-Policy"]
    assert client.get(exam["files"]["chest_map.png"]).content.startswith(b"\x89PNG")
    assert client.get(exam["files"]["score.csv"]).text.startswith("zone,label,status,file,score,rule")
    assert client.post("/api/exam", json={"scheme": "12", "zones": {"R7": rids["R1"]}}).status_code == 400
    assert client.post("/api/exam", json={"zones": {"R2": "unknown-result"}}).status_code == 404
    assert client.post("/api/exam", content=b"not json").status_code == 400


def test_exam_scores_from_each_clips_severity() -> None:
    base = {"diagnosis": "covid", "probabilities": {"covid": 1.0}, "frames": [{}] * 3, "ood_frames": 0}
    files = {"R1": {**base, "path": "a.mp4", "severity": 2, "severity_rule": "confluent B-lines"},
             "L2": {**base, "path": "b.mp4", "severity": None, "severity_rule": "no pleural line found"}}  # fmt: skip
    _, doc = score_predictions(files, "14")
    zones = {z["zone"]: z for z in doc["zones"]}
    assert doc["total"] == 2 and doc["zones_scored"] == 1 and doc["max_total"] == 42
    assert zones["R1"]["score"] == 2 and zones["R1"]["rule"] == "confluent B-lines" and zones["R1"]["file"] == "a.mp4"
    assert zones["L2"]["status"] == "not scored" and any("b.mp4" in p for p in doc["problems"])
    assert not any(".clip" in p for p in doc["problems"])
    with pytest.raises(ValueError, match="unknown zone"):
        score_predictions({"R7": base}, "12")


def test_serve_command_refuses_remote_hosts_without_the_flag(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "--allow-remote" in res.output
    res = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path / "none.safetensors")])
    assert res.exit_code == 2 and "model file not found" in res.output
    res = CliRunner().invoke(cli, ["serve", "--workers", "3"])
    assert res.exit_code == 2


def test_serve_command_announces_its_address_once_the_model_has_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The address (and the warning for a remote host) is printed after the model loads, just before listening."""
    import uvicorn

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    res = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--allow-remote", "--port", "8123"])
    assert res.exit_code == 0, res.output
    assert calls == [calls[0]] and calls[0]["host"] == "0.0.0.0" and calls[0]["port"] == 8123
    assert "anyone who can reach this machine" in res.output and "http://0.0.0.0:8123/" in res.output


def test_serve_command_defaults_are_the_config_defaults() -> None:
    import dataclasses
    import inspect

    from pleura.cli import serve as command

    params = {name: p.default.default for name, p in inspect.signature(command).parameters.items()}
    config = {f.name: f.default for f in dataclasses.fields(ServeConfig) if f.default is not dataclasses.MISSING}
    renamed = {"keep": "keep_s"}
    checked = 0
    for name, value in params.items():
        key = renamed.get(name, name)
        if key in config and key != "model":
            assert value == config[key], f"pleura serve --{name}: {value!r} != ServeConfig.{key} {config[key]!r}"
            checked += 1
    assert checked == 10  # every option with a config field, tta and ood included


def _default_schema() -> str:
    """The mask schema of the default model (its masks are written in it)."""
    return json.loads(pretrained().with_suffix(".json").read_text())["metadata"]["schema"]
