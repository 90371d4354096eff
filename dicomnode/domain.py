"""Small immutable values passed between stages: states, predictions, model identity,
and the typed description of work (a claimed job) and of its results (objects, findings)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class JobState(StrEnum):
    """Life cycle of one study's inference job; the database row is the source of truth.

    RECEIVED -> READY (study stable) -> RUNNING (claimed) -> DONE (results written)
    -> SENT (every result acknowledged by the destination). SKIPPED: nothing usable
    in the study. FAILED: attempts exhausted, ``last_error`` says why.
    """

    RECEIVED = "received"
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    SENT = "sent"
    SKIPPED = "skipped"
    FAILED = "failed"


class InstanceState(StrEnum):
    """Whether a received instance is used for inference."""

    ACCEPTED = "accepted"
    SKIPPED = "skipped"


class OutboxState(StrEnum):
    """Delivery state of one produced result object."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class ResultKind(StrEnum):
    """Kind of a produced result object."""

    HEATMAP_SC = "heatmap_sc"
    FINDINGS_SR = "findings_sr"


class FindingDecision(StrEnum):
    """What the node concluded about one label on one image (a ``finding`` row)."""

    PRESENT = "present"
    """probability >= threshold on an assessable image."""
    ABSENT = "absent"
    """probability < threshold on an assessable image."""
    NOT_ASSESSED = "not_assessed"
    """No decision: the row's ``not_assessed_reason`` (a :class:`NotAssessedReason`) says why."""


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies the model that produced a result (goes into SR TID 4019).

    Attributes:
        name: registry name, e.g. ``"default"`` or ``"vit-tiny-pneumonia"``.
        version: manifest version string, e.g. ``"1.0.0"``.
        architecture: timm architecture, e.g. ``"efficientnet_lite0"``.
        weights_sha256: hex sha256 of the weights file.
    """

    name: str
    version: str
    architecture: str
    weights_sha256: str


@dataclass(frozen=True)
class Prediction:
    """The model's output for one image.

    Attributes:
        labels: finding names in model output order, e.g. ``("pneumonia",)``.
        probabilities: sigmoid probability per label, each in [0, 1].
        thresholds: decision threshold per label, each in [0, 1].
    """

    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    thresholds: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.labels) == len(self.probabilities) == len(self.thresholds)):
            raise ValueError("labels, probabilities and thresholds must have the same length")

    def is_positive(self, index: int) -> bool:
        """True when label ``index`` reaches its threshold (probability >= threshold)."""
        return self.probabilities[index] >= self.thresholds[index]

    @property
    def top_index(self) -> int:
        """Index of the label reported and explained: the most probable one."""
        return max(range(len(self.probabilities)), key=lambda i: self.probabilities[i])


class NotAssessedReason(StrEnum):
    """Why an image received no finding (neither present nor absent).

    Each value has one coded concept in :mod:`dicomnode.outputs.codes` for the SR.
    """

    NOT_CHEST_RADIOGRAPH = "not_chest_radiograph"
    """The input gate judged the pixels not to be a frontal chest radiograph."""
    INVERTED_GRAYSCALE = "inverted_grayscale"
    """The pixels look like a chest radiograph shown inverted (wrong photometric interpretation)."""
    NO_IMAGE_CONTENT = "no_image_content"
    """Blank, nearly uniform or pure-noise pixels."""
    UNDECODABLE = "undecodable"
    """The pixel data could not be decoded or used."""
    OUT_OF_POPULATION = "out_of_population"
    """Outside the model's intended population and ``model.out_of_population = "skip"``."""
    HEADER_NOT_ACCEPTED = "header_not_accepted"
    """Refused from its header at receive time (body part, modality, multi-frame, ...)."""


@dataclass(frozen=True)
class GateVerdict:
    """The input gate's decision on one image, taken from its pixels before any finding.

    Attributes:
        assessable: True when the model may assert findings on this image.
        reason: why not, when ``assessable`` is False.
        score: out-of-distribution score (higher = less like the training images);
            NaN when the model has no gate.
        threshold: the score above which an image is gated; NaN without a gate.
        detail: one human-readable line (no PHI), e.g. ``"OOD score 41.2 > 27.9"``.
    """

    assessable: bool
    reason: NotAssessedReason | None = None
    score: float = float("nan")
    threshold: float = float("nan")
    detail: str = ""

    @classmethod
    def accepted(cls) -> GateVerdict:
        """The verdict of a model without a gate: everything is assessable."""
        return cls(assessable=True)


class PopulationStatus(StrEnum):
    """Whether an image's header places it in the model's intended population."""

    WITHIN = "within"
    OUTSIDE = "outside"
    UNKNOWN = "unknown"
    """The header lacks (or has an unreadable) PatientAge or ViewPosition: not "outside"."""


@dataclass(frozen=True)
class PopulationCheck:
    """An image compared with the model's intended population (header only).

    Attributes:
        status: within, outside or unknown.
        detail: one human-readable line (no PHI), e.g.
            ``"age 45 years outside intended 1-5 years"``; empty when within.
    """

    status: PopulationStatus
    detail: str = ""


@dataclass(frozen=True)
class ClaimedInstance:
    """An accepted instance of a claimed job."""

    sop_instance_uid: str
    path: str


@dataclass(frozen=True)
class RefusedInstance:
    """An instance of the study that is not used for inference, and why.

    Attributes:
        reason: HEADER_NOT_ACCEPTED for instances skipped at receive time; the reason
            recorded by the batch (e.g. UNDECODABLE) for instances skipped there.
        detail: the recorded reason text (no PHI).
    """

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    path: str
    reason: NotAssessedReason
    detail: str


@dataclass(frozen=True)
class PriorResult:
    """The study's latest findings SR, produced by an earlier job (to be superseded)."""

    sop_instance_uid: str
    sop_class_uid: str
    path: str


@dataclass(frozen=True)
class ClaimedJob:
    """A job claimed for processing by one worker.

    A study's results always cover the whole study: ``instances`` holds every accepted
    instance of the study, those of earlier jobs included (an image that arrives after
    the study's results were produced re-analyses all of them), ``refused`` the study's
    SKIPPED instances, and ``predecessor`` the findings SR the new one supersedes.
    """

    job_id: int
    study_instance_uid: str
    claimed_at: datetime
    instances: tuple[ClaimedInstance, ...]
    refused: tuple[RefusedInstance, ...] = ()
    predecessor: PriorResult | None = None


@dataclass(frozen=True)
class NewResult:
    """A produced result object, already written under the data folder."""

    kind: ResultKind
    sop_instance_uid: str
    sop_class_uid: str
    path: str


@dataclass(frozen=True)
class NewFinding:
    """What a job concluded about one label on one source image (a ``finding`` row).

    Attributes:
        sop_instance_uid: the source image.
        label: the finding's name (``"pneumonia"``); None for an image not assessed as a whole.
        decision: present / absent, or not assessed.
        probability: model probability in [0, 1]; None when not assessed.
        threshold: the decision threshold in [0, 1]; None when not assessed.
        not_assessed_reason: why no decision (required when ``decision`` is NOT_ASSESSED).
        detail: one line without PHI (e.g. the gate's score), or None.
        model_name: registry name of the model.
        model_version: manifest version of the model.
        sr_sop_instance_uid: the findings SR that reports it, if one was written.
        sc_sop_instance_uid: the heatmap SC of the image, if one was written.
    """

    sop_instance_uid: str
    label: str | None
    decision: FindingDecision
    model_name: str
    model_version: str
    probability: float | None = None
    threshold: float | None = None
    not_assessed_reason: NotAssessedReason | None = None
    detail: str | None = None
    sr_sop_instance_uid: str | None = None
    sc_sop_instance_uid: str | None = None

    def __post_init__(self) -> None:
        if (self.decision == FindingDecision.NOT_ASSESSED) != (self.not_assessed_reason is not None):
            raise ValueError("not_assessed_reason is required exactly when the decision is not_assessed")
        for name in ("probability", "threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} {value} is outside [0, 1]")
