"""Web server start-up rules, the node's health check and the metrics folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomnode.config import Settings
from dicomnode.errors import ConfigError
from dicomnode.node import Node, node_health
from dicomnode.web import multiproc
from dicomnode.web.server import check_exposure, is_loopback


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("node.example", False),
])  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_public_address_needs_a_token() -> None:
    public = Settings.model_validate({"dicom": {"bind_address": "0.0.0.0"}, "http": {"port": 8080}})
    with pytest.raises(ConfigError, match=r"set http\.token") as caught:
        check_exposure(public)
    assert "\n" not in str(caught.value)
    check_exposure(public.model_copy(update={"http": public.http.model_copy(update={"token": "x" * 20})}))
    check_exposure(Settings.model_validate({"http": {"port": 8080}}))  # loopback: no token needed


def test_token_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Settings.model_validate({"http": {"token": "short"}})


def test_health_names_a_stopped_scheduler_and_a_full_disk(tmp_path: Path) -> None:
    settings = Settings.model_validate({"store": {"data_dir": tmp_path, "min_free_bytes": 1}})
    node = Node(settings, run_worker=True, run_receiver=False)  # built, never started
    try:
        assert node_health(settings, node, None) == ["the batch scheduler is not running"]
        huge = settings.model_copy(update={"store": settings.store.model_copy(update={"min_free_bytes": 10**18})})
        problems = node_health(huge, node, None)
        assert any("below store.min_free_bytes" in p and "0xA700" in p for p in problems)
        receiver = Node(settings, run_worker=False, run_receiver=True)
        try:
            assert node_health(settings, receiver, None) == ["the DICOM receiver is not running"]
        finally:
            receiver.stop()
    finally:
        node.stop()


def test_prepare_points_at_the_data_folder_and_drops_dead_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(multiproc.ENV, "")  # restored after the test
    folder = tmp_path / multiproc.METRICS_AREA
    folder.mkdir()
    dead = folder / "counter_999999999.db"
    alive = folder / f"counter_{os.getppid()}.db"
    dead.write_bytes(b"")
    alive.write_bytes(b"")
    assert multiproc.prepare(tmp_path) == folder.resolve()
    assert os.environ[multiproc.ENV] == str(folder.resolve())
    assert not dead.exists() and alive.exists()
