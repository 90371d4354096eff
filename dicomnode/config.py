"""One typed, validated Settings object for the whole node.

Source order (first wins): CLI flags (passed as ``overrides``) > environment
(``DICOMNODE_`` prefix, ``__`` between nested names, e.g. ``DICOMNODE_DICOM__PORT``)
> TOML file (``--config`` or ``DICOMNODE_CONFIG``) > defaults.

Only ``cli`` calls :func:`load_settings`; everything else receives the
sub-settings it needs as an argument.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from dicomnode.durations import parse_duration
from dicomnode.errors import ConfigError

#: ``DICOMNODE_*`` variables that are not Settings fields (read elsewhere, or by the tests).
NON_SETTINGS_ENV = frozenset({"DICOMNODE_CONFIG", "DICOMNODE_MODELS_DIR", "DICOMNODE_SHARED_DATA"})
_ENV_PREFIX = "DICOMNODE_"
MIB = 1024 * 1024
#: Default ``store.min_free_bytes``: 1 GiB, room for about a hundred 10 MB radiographs and their results.
DEFAULT_MIN_FREE_BYTES = 1024 * MIB
_HHMM_RANGE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def split_list(value: Any) -> Any:
    """Accept a list as JSON (``'["A", "B"]'``) or comma-separated text (``"A,B"``)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def validate_ae_title(value: str) -> str:
    """AE title rules of PS3.5 (as pynetdicom ``_validators.validate_ae``).

    1 to 16 characters of printable ASCII, no backslash, not all spaces.

    Raises:
        ValueError: the title breaks one of the rules.
    """
    if not 1 <= len(value) <= 16:
        raise ValueError(f"AE title {value!r} must be 1 to 16 characters")
    if not value.strip():
        raise ValueError("AE title must not be only spaces")
    if "\\" in value or any(not (0x20 <= ord(ch) < 0x7F) for ch in value):
        raise ValueError(f"AE title {value!r} must be printable ASCII without backslash")
    return value


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DicomSettings(_Group):
    """The node's own DICOM application entity (the receiving side)."""

    ae_title: str = "DICOMNODE"
    port: int = Field(default=11112, ge=1, le=65535)
    bind_address: str = "127.0.0.1"
    allowed_calling_aets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="empty = any calling AE may associate"
    )
    require_called_ae_title: bool = True
    max_associations: int = Field(default=16, ge=1, le=1000)
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    maximum_pdu_size: int = Field(default=262144, ge=0)
    max_pending_connections: int = Field(
        default=64,
        ge=1,
        le=10000,
        description="open connections without an A-ASSOCIATE-RQ yet (or mid TLS handshake); "
        "past this the oldest one is closed",
    )
    max_dataset_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="largest C-STORE data set taken (bytes, also after inflating a deflated one); "
        "a larger one is aborted or refused",
    )
    receiver_processes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="processes accepting associations on the node's port(s) for the receiver/all roles "
        "(they share the listening sockets); 0 = auto: the CPU count, at most 4. max_associations and "
        "max_pending_connections apply per process",
    )
    tls_port: int | None = Field(
        default=None, ge=1, le=65535, description="second port for DICOM TLS (BCP 195, mutual authentication); None = off"
    )
    tls_certificate: Path | None = Field(default=None, description="PEM certificate (chain) of the node")
    tls_private_key: Path | None = Field(default=None, description="PEM private key of tls_certificate")
    tls_ca_certificates: Path | None = Field(
        default=None, description="PEM bundle of the CAs whose client certificates are trusted"
    )

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return validate_ae_title(value)

    @model_validator(mode="after")
    def _check_tls(self) -> DicomSettings:
        if self.tls_port is None:
            return self
        if self.tls_port == self.port:
            raise ValueError("tls_port must differ from port")
        for name in ("tls_certificate", "tls_private_key", "tls_ca_certificates"):
            path = getattr(self, name)
            if path is None:
                raise ValueError(f"{name} is required when tls_port is set (mutual TLS)")
            if not Path(path).is_file():
                raise ValueError(f"{name} {path} is not a file")
        return self

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _split_aets(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _check_aets(cls, value: list[str]) -> list[str]:
        return [validate_ae_title(v) for v in value]


class DestinationSettings(_Group):
    """Where results are sent with C-STORE. ``host=None`` keeps results local only."""

    ae_title: str = "PACS"
    host: str | None = None
    port: int = Field(default=104, ge=1, le=65535)
    calling_ae_title: str | None = Field(
        default=None, description="our AE title as SCU; None = dicom.ae_title"
    )
    max_attempts: int = Field(default=20, ge=1)
    retry_backoff_s: float = Field(default=10.0, gt=0, description="first retry delay, doubled each try")
    retry_backoff_max_s: float = Field(default=600.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return validate_ae_title(value)

    @property
    def enabled(self) -> bool:
        """True when a destination host is configured."""
        return self.host is not None

    def spec(self) -> str | None:
        """``AET@HOST:PORT`` (the form :meth:`parse` reads); None when not enabled."""
        if self.host is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"

    @staticmethod
    def parse(spec: str) -> dict[str, Any]:
        """Parse ``AET@HOST:PORT`` (IPv6 hosts in brackets: ``AET@[::1]:104``).

        Raises:
            ValueError: the text is not of that form.
        """
        match = re.fullmatch(r"(?P<ae>[^@]+)@(?:\[(?P<h6>[^\]]+)\]|(?P<h>[^:]+)):(?P<port>\d+)", spec)
        if match is None:
            raise ValueError(f"destination {spec!r} is not of the form AET@HOST:PORT")
        return {
            "ae_title": validate_ae_title(match["ae"]),
            "host": match["h6"] or match["h"],
            "port": int(match["port"]),
        }


class StoreSettings(_Group):
    """Where received and produced files and the queue database live."""

    data_dir: Path = Path("dicomnode-data")
    db_url: str | None = Field(
        default=None, description="SQLAlchemy URL; None = SQLite file data_dir/dicomnode.sqlite3"
    )
    fsync: bool = Field(
        default=True,
        description="flush every received file to stable storage (fdatasync) before it is acknowledged; "
        "False trades durability on power loss for speed (an OS crash may lose acknowledged instances)",
    )
    min_free_bytes: int = Field(
        default=DEFAULT_MIN_FREE_BYTES,
        ge=0,
        description="below this much free space in the data folder C-STORE answers 0xA700 (out of resources), "
        "/healthz answers 503 and status says why; 0 = off",
    )
    retention: str | None = Field(
        default=None,
        description='remove the files of delivered (or, without a destination, processed) studies older than '
        'this, e.g. "30d", on a schedule (dicomnode purge); None = keep every file',
    )
    retention_interval_s: float = Field(
        default=3600.0, gt=0, description="seconds between two retention runs (each removes at most 100 studies)"
    )

    @field_validator("retention")
    @classmethod
    def _check_retention(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    def resolved_db_url(self) -> str:
        """The database URL in effect."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'dicomnode.sqlite3').resolve()}"


class SchedulerSettings(_Group):
    """When studies become ready and how batches are run."""

    interval_s: float = Field(default=5.0, gt=0, description="batch job period")
    stable_after_s: float = Field(default=10.0, gt=0, description="quiet time before a study is ready")
    batch_size: int = Field(
        default=32, ge=1,
        description="studies claimed per batch (the pipeline decodes ahead of and builds behind the model "
        "within one claim; a full claim is followed by the next at once)",
    )
    lease_s: float = Field(default=600.0, gt=0, description="RUNNING jobs older than this are re-queued")
    max_attempts: int = Field(default=3, ge=1, description="inference attempts before FAILED")
    retry_backoff_s: float = Field(default=30.0, ge=0, description="delay before a failed job is retried")
    pipeline_processes: int | Literal["auto"] = Field(
        default="auto",
        description='processes decoding images and building results beside the model: "auto" = one per CPU, '
        "0 = none (all in the worker process)",
    )
    batch_windows: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='local-time windows "HH:MM-HH:MM" when batches may run; empty = always',
    )

    @field_validator("batch_windows", mode="before")
    @classmethod
    def _split_windows(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("pipeline_processes")
    @classmethod
    def _check_processes(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError(f'pipeline_processes must be "auto" or >= 0, got {value}')
        return value

    @field_validator("batch_windows")
    @classmethod
    def _check_windows(cls, value: list[str]) -> list[str]:
        for window in value:
            if not _HHMM_RANGE.match(window):
                raise ValueError(f"batch window {window!r} is not HH:MM-HH:MM")
        return value


class ModelSettings(_Group):
    """Which model serves and where it runs."""

    name: str = Field(default="default", description="registry name or path to a manifest")
    device: str = Field(default="auto", description='"auto" (CUDA if present), "cpu", "cuda", "cuda:1"')
    batch_size: int = Field(default=8, ge=1, description="images per forward pass")
    explain: Literal["all", "positive"] = Field(
        default="all", description='Grad-CAM for every image or only for positive findings'
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="per-label overrides of the manifest thresholds"
    )
    out_of_population: Literal["flag", "skip"] = Field(
        default="flag",
        description='images outside the manifest\'s intended population (age, view): "flag" = assess and '
        'say so in the SR; "skip" = not assessed (reason out_of_population)',
    )

    @field_validator("thresholds")
    @classmethod
    def _check_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        for label, threshold in value.items():
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold for {label!r} must lie in [0, 1]")
        return value


class OutputSettings(_Group):
    """How result objects are labelled."""

    manufacturer: str = "dicomnode"
    institution_name: str | None = None
    sc_series_description: str = "AI heatmap - not for diagnostic use"
    sr_series_description: str = "AI findings - not for diagnostic use"
    content_qualification: Literal["RESEARCH", "PRODUCT", "SERVICE"] = "RESEARCH"
    sc_series_number: int = Field(default=9901, ge=1)
    sr_series_number: int = Field(default=9902, ge=1)
    max_heatmap_side: int = Field(default=1024, ge=64, le=4096, description="pixels, long side of the SC")


class HttpSettings(_Group):
    """The node's web page, JSON API and Prometheus metrics (``serve --http-port``).

    Served on ``dicom.bind_address``. A non-loopback address needs ``token``: every
    request must then carry ``Authorization: Bearer <token>`` (``serve`` refuses to
    start without one).
    """

    port: int | None = Field(default=None, ge=1, le=65535, description="HTTP port; None = no web server")
    show_phi: bool = Field(
        default=False, description="show patient name, ID, birth date and accession number on the page and API"
    )
    token: str | None = Field(
        default=None, min_length=16, description="bearer token every request must carry (required off loopback)"
    )
    min_free_disk_mb: int | None = Field(
        default=None, ge=0, exclude=True, description="deprecated: use store.min_free_bytes (this value x 1 MiB is used when set)"
    )


class Settings(BaseSettings):
    """All of the node's settings; see the module docstring for the source order."""

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX, env_nested_delimiter="__", extra="forbid", protected_namespaces=()
    )

    dicom: DicomSettings = Field(default_factory=DicomSettings)
    destination: DestinationSettings = Field(default_factory=DestinationSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _distinct_calling_ae(self) -> Settings:
        if self.destination.calling_ae_title is not None:
            validate_ae_title(self.destination.calling_ae_title)
        return self

    @model_validator(mode="after")
    def _deprecated_min_free_disk_mb(self) -> Settings:
        """``http.min_free_disk_mb`` (older releases) sets ``store.min_free_bytes`` unless that is set too."""
        mb = self.http.min_free_disk_mb
        if mb is not None and "min_free_bytes" not in self.store.model_fields_set:
            warnings.warn(
                f"http.min_free_disk_mb is deprecated: write store.min_free_bytes = {mb * MIB}",
                FutureWarning, stacklevel=2,
            )
            self.store.min_free_bytes = mb * MIB
        return self


def load_settings(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the Settings in effect.

    Args:
        config_file: TOML file; None = ``$DICOMNODE_CONFIG`` if set, else no file.
        overrides: nested dict of values given on the command line (highest priority);
            ``None`` values are dropped so an absent flag never hides env or file values.

    Raises:
        ConfigError: the file is missing or not valid TOML (the message names the line and
            column), a ``DICOMNODE_*`` variable names no setting, or a value is invalid
            (the message lists each).
    """
    path = config_file or (Path(os.environ["DICOMNODE_CONFIG"]) if os.environ.get("DICOMNODE_CONFIG") else None)
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    check_environment(os.environ)

    class _Sourced(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    cleaned = _drop_none(overrides or {})
    try:
        sourced = _Sourced(**cleaned)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except SettingsError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    return Settings.model_validate(sourced.model_dump())


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse ``DICOMNODE_*`` variables that name no setting (a typo would be ignored silently).

    ``DICOMNODE_<GROUP>__<FIELD>`` must name a group and one of its fields (deeper parts
    only below a mapping field such as ``model.thresholds``); ``DICOMNODE_<NAME>`` a
    top-level field or a whole group given as JSON. Names are matched case-insensitively,
    as pydantic-settings reads them. :data:`NON_SETTINGS_ENV` are left alone.

    Raises:
        ConfigError: naming the first such variable and the closest valid name.
    """
    for name in sorted(environ):
        if not name.upper().startswith(_ENV_PREFIX) or name.upper() in NON_SETTINGS_ENV:
            continue
        problem = _env_name_problem(name[len(_ENV_PREFIX):].lower().split("__"))
        if problem:
            raise ConfigError(f"environment variable {name}: {problem}")


def _env_name_problem(parts: list[str]) -> str | None:
    fields = Settings.model_fields
    head = parts[0]
    if head not in fields:
        return f"no setting or section {head!r}{_did_you_mean(head, fields)}"
    annotation = fields[head].annotation
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return None if len(parts) == 1 else f"{head!r} is a setting, not a section"
    if len(parts) == 1:
        return None  # the whole section as JSON; its keys are validated with the values
    group_fields = annotation.model_fields
    if parts[1] not in group_fields:
        return f"section [{head}] has no setting {parts[1]!r}{_did_you_mean(parts[1], group_fields)}"
    if len(parts) > 2 and get_origin(group_fields[parts[1]].annotation) is not dict:
        return f"{head}.{parts[1]} has no parts"
    return None


def _did_you_mean(word: str, choices: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(choices)})"


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            inner = _drop_none(value)
            if inner:
                out[key] = inner
        elif value is not None:
            out[key] = value
    return out


def _format_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)
