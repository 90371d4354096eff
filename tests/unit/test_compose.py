"""The compose deployment is consistent with the node's settings and with Orthanc's config.

No Docker engine runs here, so the files are parsed and cross-checked:
services, published ports, volumes, every ``DICOMNODE_*`` variable against the real
Settings fields (and values, through ``load_settings``), the node <-> Orthanc
registration, the viewer's DICOMweb path, the GPU override and the Dockerfile.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dicomnode.config import Settings, load_settings
from tests.helpers import REPO_ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extras")

COMPOSE_DIR = REPO_ROOT / "compose"
#: ``DICOMNODE_*`` names that are not Settings fields but are read by the code itself.
NON_SETTINGS_ENV = {"DICOMNODE_CONFIG", "DICOMNODE_MODELS_DIR"}


def _load_yaml(name: str) -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE_DIR / name).read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml("docker-compose.yml")


@pytest.fixture(scope="module")
def orthanc_config() -> dict[str, Any]:
    config = json.loads((COMPOSE_DIR / "orthanc.json").read_text())
    assert isinstance(config, dict)
    return config


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _ports(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port) for "ADDR:HOST:CONTAINER" entries."""
    published = {}
    for entry in service.get("ports", []):
        match = re.fullmatch(r"(?:(?P<addr>[\d.]+):)?(?P<host>\d+):(?P<ctr>\d+)(?:/tcp)?", str(entry))
        assert match, f"unexpected port syntax {entry!r}"
        published[int(match["ctr"])] = (match["addr"] or "0.0.0.0", int(match["host"]))
    return published


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source for "SOURCE:TARGET[:ro]" volume entries."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        mounts[target] = source
    return mounts


def _settings_env_name_ok(name: str) -> bool:
    """Whether ``DICOMNODE_<GROUP>__<FIELD>`` (or ``DICOMNODE_<FIELD>``) names a Settings field."""
    parts = name.removeprefix("DICOMNODE_").lower().split("__")
    fields = Settings.model_fields
    if parts[0] not in fields:
        return False
    annotation = fields[parts[0]].annotation
    is_group = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    if len(parts) == 1:
        return not is_group
    return len(parts) == 2 and is_group and parts[1] in annotation.model_fields  # type: ignore[union-attr]


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"orthanc", "dicomnode", "viewer", "proxy"}
    assert services["orthanc"]["image"].startswith("orthancteam/orthanc:")
    assert services["viewer"]["image"].startswith("ohif/app:")
    assert services["proxy"]["image"].startswith("nginx:")
    build = services["dicomnode"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == COMPOSE_DIR / "Dockerfile"
    assert (COMPOSE_DIR / build["context"]).resolve() == REPO_ROOT
    assert services["dicomnode"]["depends_on"] == ["orthanc"]
    for name in ("orthanc", "viewer", "proxy"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image version"


def test_every_dicomnode_variable_is_a_real_setting(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(compose["services"]["dicomnode"])
    names = [n for n in env if n.startswith("DICOMNODE_")]
    assert names, "the node gets its settings from DICOMNODE_* variables"
    unknown = [n for n in names if n not in NON_SETTINGS_ENV and not _settings_env_name_ok(n)]
    assert unknown == [], f"not Settings fields: {unknown}"
    # The values must validate too: load the settings the container would see.
    for name in list(os.environ):
        if name.startswith("DICOMNODE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.dicom.ae_title == env["DICOMNODE_DICOM__AE_TITLE"]
    assert settings.store.data_dir == Path(env["DICOMNODE_STORE__DATA_DIR"])
    assert settings.destination.host == env["DICOMNODE_DESTINATION__HOST"]
    assert settings.dicom.allowed_calling_aets == json.loads(env["DICOMNODE_DICOM__ALLOWED_CALLING_AETS"])


def test_a_wrong_variable_name_would_be_caught() -> None:
    assert _settings_env_name_ok("DICOMNODE_DICOM__PORT")
    assert _settings_env_name_ok("DICOMNODE_LOG_LEVEL")
    assert not _settings_env_name_ok("DICOMNODE_DICOM__PROT")
    assert not _settings_env_name_ok("DICOMNODE_DICOM")
    assert not _settings_env_name_ok("DICOMNODE_NOPE__PORT")


def test_node_and_orthanc_register_each_other(compose: dict[str, Any], orthanc_config: dict[str, Any]) -> None:
    env = _env(compose["services"]["dicomnode"])
    node = [m for m in orthanc_config["DicomModalities"].values() if m["AET"] == env["DICOMNODE_DICOM__AE_TITLE"]]
    assert len(node) == 1, "Orthanc registers the node's AE title exactly once"
    assert node[0]["Host"] == "dicomnode", "the compose service name"
    assert node[0]["Port"] == int(env["DICOMNODE_DICOM__PORT"])
    assert node[0].get("AllowStore", True) is True, "the node must be allowed to store results"
    assert env["DICOMNODE_DESTINATION__AE_TITLE"] == orthanc_config["DicomAet"]
    assert env["DICOMNODE_DESTINATION__HOST"] == "orthanc"
    assert int(env["DICOMNODE_DESTINATION__PORT"]) == orthanc_config["DicomPort"]
    allowed = json.loads(env["DICOMNODE_DICOM__ALLOWED_CALLING_AETS"])
    assert orthanc_config["DicomAet"] in allowed


def test_autoroute_script_targets_the_registered_node(orthanc_config: dict[str, Any], compose: dict[str, Any]) -> None:
    mounts = _mounts(compose["services"]["orthanc"])
    for script in orthanc_config["LuaScripts"]:
        source = mounts[script]
        lua = (COMPOSE_DIR / source).read_text()
        targets = re.findall(r"SendToModality\(\s*\w+\s*,\s*'([^']+)'", lua)
        assert targets and set(targets) <= set(orthanc_config["DicomModalities"])


def test_ports_are_published_on_loopback(compose: dict[str, Any], orthanc_config: dict[str, Any]) -> None:
    services = compose["services"]
    env = _env(services["dicomnode"])
    node_ports = _ports(services["dicomnode"])
    assert int(env["DICOMNODE_DICOM__PORT"]) in node_ports
    orthanc_ports = _ports(services["orthanc"])
    assert {orthanc_config["DicomPort"], orthanc_config["HttpPort"]} <= set(orthanc_ports)
    assert 80 in _ports(services["proxy"])
    assert "ports" not in services["viewer"], "the viewer is reached through the proxy only"
    for name in ("dicomnode", "orthanc", "proxy"):
        for address, _ in _ports(services[name]).values():
            assert address == "127.0.0.1", f"{name}: published on {address}, not loopback"


def test_volumes(compose: dict[str, Any], orthanc_config: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set(compose["volumes"])
    node = _mounts(services["dicomnode"])
    assert node[_env(services["dicomnode"])["DICOMNODE_STORE__DATA_DIR"]] in declared
    orthanc = _mounts(services["orthanc"])
    assert orthanc[orthanc_config["StorageDirectory"]] in declared
    assert orthanc["/etc/orthanc/orthanc.json"] == "./orthanc.json"
    for service in services.values():
        for target, source in _mounts(service).items():
            if source.startswith("."):
                assert (COMPOSE_DIR / source).is_file(), f"{source} (mounted at {target}) is missing"
            else:
                assert source in declared, f"named volume {source} is not declared"


def test_viewer_reaches_orthanc_dicomweb(compose: dict[str, Any], orthanc_config: dict[str, Any]) -> None:
    dicomweb = orthanc_config["DicomWeb"]
    assert dicomweb["Enable"] is True
    assert _env(compose["services"]["orthanc"])["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    root = dicomweb["Root"]
    nginx = (COMPOSE_DIR / "nginx.conf").read_text()
    assert re.search(
        rf"location {re.escape(root)} \{{\s*proxy_pass http://orthanc:{orthanc_config['HttpPort']}{re.escape(root)};",
        nginx,
    ), "the proxy forwards the DICOMweb root to Orthanc's HTTP port"
    proxy_mounts = _mounts(compose["services"]["proxy"])
    alias = re.search(r"location = /app-config\.js \{\s*alias (\S+);", nginx)
    assert alias and proxy_mounts[alias[1]] == "./ohif-config.js"
    config = (COMPOSE_DIR / "ohif-config.js").read_text()
    assert f"/{root.strip('/')}`" in config and "window.config" in config
    assert "proxy_pass http://viewer:80;" in nginx


def test_gpu_override_reserves_an_nvidia_gpu() -> None:
    gpu = _load_yaml("docker-compose.gpu.yml")["services"]["dicomnode"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "cuda" in gpu["build"]["args"]["BASE_IMAGE"]
    assert gpu["build"]["args"]["TORCH_INDEX_URL"] == ""
    for name in _env(gpu):
        assert name in NON_SETTINGS_ENV or _settings_env_name_ok(name)


def test_dockerfile(compose: dict[str, Any]) -> None:
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.MULTILINE)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE)[1])  # type: ignore[index]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)[1])  # type: ignore[index]
    assert entrypoint + cmd == ["dicomnode", "serve", "--host", "0.0.0.0"]
    env_names = re.findall(r"\b(DICOMNODE_[A-Z_]+)=", text)
    assert env_names
    for name in env_names:
        assert name in NON_SETTINGS_ENV or _settings_env_name_ok(name), name
    # The names that are not Settings fields are really read by the code.
    source = "\n".join(p.read_text() for p in (REPO_ROOT / "dicomnode").rglob("*.py"))
    for name in NON_SETTINGS_ENV & set(env_names):
        assert name.removeprefix("DICOMNODE_") in source or name in source, name
    expose = re.search(r"^EXPOSE (\d+)$", text, re.MULTILINE)
    assert expose and int(expose[1]) == int(_env(compose["services"]["dicomnode"])["DICOMNODE_DICOM__PORT"])
    ignore = [
        line for line in (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ignore[0] == "*", "the build context starts from nothing"
    for needed in ("!pyproject.toml", "!README.md", "!dicomnode", "!models"):
        assert needed in ignore
