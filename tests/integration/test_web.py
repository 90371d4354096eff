"""The web page, API and metrics of a real ``dicomnode serve --http-port`` process.

DCMTK storescu sends a study to a node with two receiving processes; DCMTK storescp
takes the results. Then real HTTP requests (urllib) read the API, the pages, the
heatmap PNG, /metrics (summed across the receiving processes) and /healthz, and
Debian's headless Chromium renders the study page.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from tests.helpers import REPO_ROOT, free_port, make_cxr_dataset, make_tiny_model, wait_for_port
from tests.integration.peers import NodeProcess, run_storescp, start_node, storescu, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk]

CHROMIUM = "/usr/bin/chromium"
TOKEN = "integration-test-token-0123"
#: Set to a folder to keep the Chromium screenshot of the study page (docs/web-study.png).
SCREENSHOT_ENV = "WEB_SCREENSHOT_OUT"


#: No proxy from the environment: everything here is on 127.0.0.1.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class WebNode:
    node: NodeProcess
    http: int
    study_uid: str
    sent: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
        request = urllib.request.Request(self.url(path), headers=headers or {})
        try:
            with _DIRECT.open(request, timeout=30) as response:
                return response.status, response.read(), response.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("content-type", "")

    def json(self, path: str) -> dict[str, object]:
        status, body, _ = self.get(path)
        assert status == 200, body
        return dict(json.loads(body))


def _study(folder: Path) -> tuple[str, list[Path]]:
    study_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(3):
        ds = make_cxr_dataset(study_uid=study_uid, seed=seed, rows=256, cols=256, PatientName="Doe^Jane")
        path = folder / f"img{seed}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


@pytest.fixture(scope="module")
def web_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    root = tmp_path_factory.mktemp("web")
    model = make_tiny_model(root / "model", threshold=0.0)  # every image positive: heatmaps show colour
    study_uid, files = _study(root / "study")
    http = free_port()
    with run_storescp(root / "pacs") as pacs:
        node = start_node(root / "node", [
            "--destination", pacs.spec, "--model", str(model), "--stable-after", "1", "--interval", "1",
            "--receivers", "2", "--http-port", str(http),
        ])  # fmt: skip
        web = WebNode(node, http, study_uid, len(files))
        try:
            wait_for_port(http)  # the web server starts once the DICOM side runs
            for path in files:  # one association each: the kernel spreads them over both processes
                result = storescu(node.port, [path])
                assert result.returncode == 0, result.stderr

            def sent() -> bool:
                rows = web.json("/api/studies")["studies"]
                return isinstance(rows, list) and bool(rows) and rows[0]["state"] == "sent"

            wait_until(sent, 120, "the study to be processed and sent")
            yield web
        finally:
            node.stop()


def test_api_reports_findings_timeline_and_delivery(web_node: WebNode) -> None:
    (row,) = web_node.json("/api/studies?positive=1")["studies"]  # type: ignore[misc]
    assert row["study_instance_uid"] == web_node.study_uid and row["positive"] is True
    detail = web_node.json(f"/api/studies/{web_node.study_uid}")
    timeline = detail["timeline"]
    assert isinstance(timeline, dict)
    assert all(timeline[k] for k in ("received", "ready", "running", "done", "sent"))
    images = detail["images"]
    assert isinstance(images, list) and len(images) == 3
    for image in images:
        (finding,) = image["findings"]
        assert finding["decision"] == "present" and 0.0 <= finding["probability"] <= 1.0
        assert finding["model"]["name"] == "tiny-test_resnet"
        assert image["heatmap"]["state"] == "sent"
    assert "patient" not in detail and b"Doe" not in web_node.get(f"/api/studies/{web_node.study_uid}")[1]


def test_metrics_sum_the_receiving_processes(web_node: WebNode) -> None:
    status, body, content_type = web_node.get("/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("dicomnode_cstore_responses_total", (("status", "0x0000"),))] == web_node.sent
    assert samples[("dicomnode_instances_received_total", (("outcome", "accepted"),))] == web_node.sent
    assert samples[("dicomnode_results_sent_total", ())] == web_node.sent + 1  # one SC per image + the SR
    assert samples[("dicomnode_jobs", (("state", "sent"),))] == 1
    assert samples[("dicomnode_oldest_pending_send_age_seconds", ())] == 0
    assert samples[("dicomnode_batch_duration_seconds_count", ())] >= 1
    assert samples[("dicomnode_inference_duration_seconds_count", ())] >= 1
    assert samples[("dicomnode_images_per_second", ())] > 0
    metrics_dir = web_node.node.data_dir / "metrics"
    pids = {p.stem.rsplit("_", 1)[1] for p in metrics_dir.glob("*.db")}
    assert len(pids) >= 2, "the parent and the receiving child both write metric files"


def test_healthz_is_ok_while_the_node_runs(web_node: WebNode) -> None:
    assert web_node.get("/healthz")[:2] == (200, b"ok\n")


def test_pages_serve_the_row_and_a_png_heatmap(web_node: WebNode) -> None:
    status, index, _ = web_node.get("/?state=sent")
    assert status == 200 and f'/studies/{web_node.study_uid}"'.encode() in index
    status, page, _ = web_node.get(f"/studies/{web_node.study_uid}")
    assert status == 200 and b"Doe" not in page
    sources = [p.split(b'"', 1)[0].decode() for p in page.split(b'<img class="heatmap" src="')[1:]]
    assert len(sources) == 3
    status, png, content_type = web_node.get(sources[0])
    assert status == 200 and content_type == "image/png"
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        assert image.format == "PNG" and min(image.size) >= 64


@pytest.mark.chromium
def test_chromium_renders_the_study_page(web_node: WebNode, tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    shot = tmp_path / "study.png"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,900",
         "--virtual-time-budget=5000", web_node.url(f"/studies/{web_node.study_uid}")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (900, 1280)
    assert pixels.std() > 10, "the screenshot is blank"
    # the heatmap overlay (colour) is on screen: pixels with strongly unequal channels
    saturated = (pixels.max(axis=2).astype(int) - pixels.min(axis=2)) > 80
    assert saturated.sum() > 1000, "no coloured heatmap on the rendered page"
    keep = os.environ.get(SCREENSHOT_ENV)
    if keep:
        shutil.copy(shot, Path(keep) / "web-study.png")


def test_public_address_without_token_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomnode", "serve", "--host", "0.0.0.0", "--port", str(free_port()),
         "--http-port", str(free_port()), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "http.token" in lines[0], result.stderr


def test_token_guards_every_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_HTTP__TOKEN", TOKEN)
    model = make_tiny_model(tmp_path / "model")
    http = free_port()
    node = start_node(tmp_path / "node", ["--model", str(model), "--receivers", "1", "--http-port", str(http)])
    try:
        web = WebNode(node, http, "", 0)
        wait_for_port(http)
        assert web.get("/healthz")[0] == 401
        assert web.get("/api/studies", {"Authorization": "Bearer nope"})[0] == 401
        assert web.get("/healthz", {"Authorization": f"Bearer {TOKEN}"})[:2] == (200, b"ok\n")
    finally:
        node.stop()
