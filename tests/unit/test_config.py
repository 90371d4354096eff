"""Settings: source order CLI > env > TOML > defaults, and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import DestinationSettings, load_settings
from dicomnode.errors import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)
    settings = load_settings()
    assert settings.dicom.ae_title == "DICOMNODE"
    assert settings.dicom.port == 11112
    assert settings.dicom.bind_address == "127.0.0.1"
    assert settings.outputs.content_qualification == "RESEARCH"
    assert "not for diagnostic use" in settings.outputs.sc_series_description
    assert settings.model.name == "default"
    assert settings.model.out_of_population == "flag"
    assert settings.store.min_free_bytes == 1024**3 and settings.store.retention is None


def test_source_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[dicom]\nport = 2000\nae_title = "FROMFILE"\n[scheduler]\ninterval_s = 7\n')
    monkeypatch.setenv("DICOMNODE_DICOM__PORT", "3000")
    settings = load_settings(config, {"dicom": {"ae_title": "FROMCLI", "bind_address": None}})
    assert settings.dicom.ae_title == "FROMCLI"  # CLI beats file
    assert settings.dicom.port == 3000  # env beats file
    assert settings.scheduler.interval_s == 7  # file beats default
    assert settings.dicom.bind_address == "127.0.0.1"  # None flag = not given


@pytest.mark.parametrize(
    "overrides",
    [
        {"dicom": {"ae_title": "A" * 17}},
        {"dicom": {"ae_title": "BAD\\AE"}},
        {"dicom": {"port": 70000}},
        {"scheduler": {"stable_after_s": 0}},
        {"scheduler": {"batch_windows": "25:00-26:00"}},
        {"model": {"thresholds": {"pneumonia": 1.5}}},
        {"model": {"out_of_population": "ignore"}},
        {"store": {"retention": "30 days"}},
        {"store": {"min_free_bytes": -1}},
    ],
)
def test_invalid_values_stop_with_a_clear_message(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, overrides)
    assert "invalid configuration" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_destination_parse() -> None:
    assert DestinationSettings.parse("PACS@127.0.0.1:104") == {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    assert DestinationSettings.parse("ORTHANC@[::1]:4242")["host"] == "::1"
    with pytest.raises(ValueError):
        DestinationSettings.parse("PACS:104")


def test_allowed_aets_from_comma_list() -> None:
    settings = load_settings(None, {"dicom": {"allowed_calling_aets": "A, B"}})
    assert settings.dicom.allowed_calling_aets == ["A", "B"]


def test_list_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_DICOM__ALLOWED_CALLING_AETS", "ORTHANC,PACS")
    monkeypatch.setenv("DICOMNODE_SCHEDULER__BATCH_WINDOWS", '["22:00-06:00"]')
    settings = load_settings()
    assert settings.dicom.allowed_calling_aets == ["ORTHANC", "PACS"]
    assert settings.scheduler.batch_windows == ["22:00-06:00"]


def test_bad_environment_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_MODEL__THRESHOLDS", "{not json")
    with pytest.raises(ConfigError, match="invalid configuration"):
        load_settings()


def test_toml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[dicom]\nae_title = "A"\nport = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert "\n" not in message
    assert str(config) in message and "line 3, column 8" in message


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("DICOMNODE_DESTINATON__HOST", "did you mean 'destination'"),
        ("DICOMNODE_DICOM__PROT", "did you mean 'port'"),
        ("DICOMNODE_LOGLEVEL", "did you mean 'log_level'"),
        ("DICOMNODE_LOG_LEVEL__X", "not a section"),
        ("dicomnode_nope__port", "known: dicom, destination"),
    ],
)
def test_unknown_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch, name: str, named: str) -> None:
    monkeypatch.setenv(name, "x")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(f"environment variable {name}: ")
    assert named in str(info.value)


def test_known_environment_variables_pass(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("DICOMNODE_MODEL__THRESHOLDS__PNEUMONIA", "0.4")
    monkeypatch.setenv("DICOMNODE_DICOM", '{"port": 2000}')
    monkeypatch.setenv("DICOMNODE_LOG_LEVEL", "DEBUG")
    settings = load_settings()
    assert settings.dicom.port == 2000 and settings.log_level == "DEBUG"
    assert settings.model.thresholds == {"pneumonia": 0.4}


def test_destination_spec_round_trips() -> None:
    for spec in ("PACS@10.0.0.5:104", "ORTHANC@[::1]:4242"):
        assert DestinationSettings(**DestinationSettings.parse(spec)).spec() == spec
    assert DestinationSettings().spec() is None


def test_retention_takes_a_duration(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[store]\nretention = "30d"\nmin_free_bytes = 0\n')
    settings = load_settings(config)
    assert settings.store.retention == "30d" and settings.store.min_free_bytes == 0


def test_bad_retention_names_the_value() -> None:
    with pytest.raises(ConfigError, match="invalid duration '1y'"):
        load_settings(None, {"store": {"retention": "1y"}})


def test_deprecated_http_min_free_disk_mb_sets_store_min_free_bytes(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[http]\nmin_free_disk_mb = 500\n")
    with pytest.warns(FutureWarning, match="store.min_free_bytes = 524288000"):
        settings = load_settings(config)
    assert settings.store.min_free_bytes == 500 * 1024 * 1024
    config.write_text("[http]\nmin_free_disk_mb = 500\n[store]\nmin_free_bytes = 7\n")
    assert load_settings(config).store.min_free_bytes == 7  # the new name wins
