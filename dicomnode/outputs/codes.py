"""Every coded concept dicomnode writes into its result objects, in one place.

Provenance of each code (checked, not guessed):

* ``PS3.16`` -- present with this exact value and meaning in the DICOM Content Mapping
  Resource as shipped in pydicom's code dictionary (``pydicom.sr.codedict.codes``); the
  CID it belongs to is named where there is one.
* ``SNOMED CT`` -- a SNOMED CT International concept that PS3.16 does not list; the value
  was cross-checked against published value sets / code maps (OMOP, FHIR IGs, ICD-10 maps).
* ``private`` -- our own scheme ``99DCMNODE`` (``99`` prefix = private, PS3.16 section 8.2),
  declared in the SR's Coding Scheme Identification Sequence
  (:data:`PRIVATE_CODING_SCHEME`).

Finding codes (the 14 NIH ChestX-ray14 labels and aliases):

==================  =========================  ==========================  ===========
label               code                       meaning                     provenance
==================  =========================  ==========================  ===========
atelectasis         SCT 46621007               Atelectasis                 SNOMED CT
cardiomegaly        SCT 8186001                Cardiomegaly                SNOMED CT [1]
effusion            SCT 60046008               Pleural effusion            PS3.16 CID 645
infiltration        DCM 112121                 Infiltrate                  PS3.16 CID 6104
mass                SCT 4147007                Mass                        PS3.16 CID 6104
nodule              SCT 27925004               Nodule                      PS3.16 CID 6104
pneumonia           SCT 233604007              Pneumonia                   SNOMED CT
pneumothorax        SCT 36118008               Pneumothorax                PS3.16 CID 6105
consolidation       SCT 95436008               Lung consolidation          SNOMED CT
edema               SCT 19242006               Pulmonary edema             PS3.16 CID 3700
emphysema           SCT 87433001               Pulmonary emphysema         SNOMED CT
fibrosis            SCT 51615001               Fibrosis of lung            SNOMED CT
pleural_thickening  99DCMNODE PLEURALTHICKEN   Pleural thickening          private [2]
hernia              SCT 84089009               Hiatal hernia               SNOMED CT [3]
==================  =========================  ==========================  ===========

[1] PS3.16 also lists SCT 287272002 "Cardiomegaly", but only in fetal-echo CIDs
    12248/12249; 8186001 is the disorder concept used by ICD-10 (I51.7) maps.
[2] No SNOMED CT code for pleural thickening could be confirmed from an authoritative
    source while writing this; a private code is safer than a possibly wrong clinical code.
    Replace it once a terminology server confirms the concept.
[3] "Hernia" in ChestX-ray14 is, on chest radiographs, a hiatal hernia.

Unknown labels: :func:`label_to_code` does **not** fail. A model may be trained on any
label set (its manifest names them), and refusing to report would fail every job.
An unknown label becomes a private ``99DCMNODE`` code whose meaning is the label in
words; :func:`is_standard_label` tells callers (and the conformance statement) whether a
label maps to a standard code.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from pydicom.sr.coding import Code

from dicomnode.domain import NotAssessedReason, PopulationStatus

if TYPE_CHECKING:  # highdicom is imported lazily: importing this module stays cheap.
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from highdicom.sr import CodedConcept

__all__ = [
    "ABSENT",
    "ALGORITHM_FAMILY_AI",
    "ANATOMIC_REGION_CHEST",
    "BEST_ILLUSTRATION_OF_FINDING",
    "COMMENT",
    "DEVICE_OBSERVER",
    "GRADCAM",
    "INTENDED_POPULATION",
    "NIH_CHESTXRAY14_LABELS",
    "NOT_ASSESSED_REASON",
    "NOT_EVALUATED",
    "POPULATION_OUTSIDE",
    "POPULATION_UNKNOWN",
    "POPULATION_WITHIN",
    "PRESENT",
    "PRIVATE_SCHEME",
    "PROBABILITY",
    "PROBABILITY_UNIT",
    "PROCEDURE_CHEST_IMAGING",
    "PROCESSING_EQUIPMENT",
    "QUALITATIVE_EVALUATIONS",
    "REPORT_TITLE",
    "SOURCE_IMAGE_FOR_PROCESSING",
    "THRESHOLD_VALUE",
    "is_standard_label",
    "label_to_code",
    "normalize_label",
    "not_assessed_code",
    "population_code",
    "presence_code",
    "private_coding_scheme",
]

#: Designator of our private coding scheme (PS3.16 section 8.2: private designators start with "99").
PRIVATE_SCHEME = "99DCMNODE"
_PRIVATE_SCHEME_NAME = "dicomnode private codes"

# ---------------------------------------------------------------------------------------
# Findings
# ---------------------------------------------------------------------------------------

#: The 14 NIH ChestX-ray14 finding labels, in the dataset's customary order.
NIH_CHESTXRAY14_LABELS: tuple[str, ...] = (
    "atelectasis",
    "cardiomegaly",
    "effusion",
    "infiltration",
    "mass",
    "nodule",
    "pneumonia",
    "pneumothorax",
    "consolidation",
    "edema",
    "emphysema",
    "fibrosis",
    "pleural_thickening",
    "hernia",
)

_FINDINGS: dict[str, Code] = {
    "atelectasis": Code("46621007", "SCT", "Atelectasis"),
    "cardiomegaly": Code("8186001", "SCT", "Cardiomegaly"),
    "effusion": Code("60046008", "SCT", "Pleural effusion"),
    "infiltration": Code("112121", "DCM", "Infiltrate"),
    "mass": Code("4147007", "SCT", "Mass"),
    "nodule": Code("27925004", "SCT", "Nodule"),
    "pneumonia": Code("233604007", "SCT", "Pneumonia"),
    "pneumothorax": Code("36118008", "SCT", "Pneumothorax"),
    "consolidation": Code("95436008", "SCT", "Lung consolidation"),
    "edema": Code("19242006", "SCT", "Pulmonary edema"),
    "emphysema": Code("87433001", "SCT", "Pulmonary emphysema"),
    "fibrosis": Code("51615001", "SCT", "Fibrosis of lung"),
    "pleural_thickening": Code("PLEURALTHICKEN", PRIVATE_SCHEME, "Pleural thickening"),
    "hernia": Code("84089009", "SCT", "Hiatal hernia"),
}

# Other spellings of the same labels (after normalize_label).
_ALIASES: dict[str, str] = {
    "pleural_effusion": "effusion",
    "infiltrate": "infiltration",
    "infiltrates": "infiltration",
    "pulmonary_edema": "edema",
    "oedema": "edema",
    "pulmonary_oedema": "edema",
    "pulmonary_emphysema": "emphysema",
    "pulmonary_fibrosis": "fibrosis",
    "hiatal_hernia": "hernia",
    "hiatus_hernia": "hernia",
    "lung_consolidation": "consolidation",
    "nodules": "nodule",
    "pleuralthickening": "pleural_thickening",
}

# ---------------------------------------------------------------------------------------
# Presence, probability, threshold, algorithm, equipment, references
# ---------------------------------------------------------------------------------------

#: Qualitative evaluation values, PS3.16 CID 241 "Present-Absent Only".
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")

#: Concept name of the model's per-label output (PS3.16 DCM 122157 "Probability"): the
#: model's (calibrated) sigmoid output in [0, 1], with unit :data:`PROBABILITY_UNIT`. Not
#: "Certainty of Finding" (DCM 111012), which is a CAD operating-point axis, not a probability.
PROBABILITY = Code("122157", "DCM", "Probability")

#: Concept name of the decision threshold (operating point) applied to that score (PS3.16).
THRESHOLD_VALUE = Code("122411", "DCM", "Threshold Value")

#: UCUM unit of both: a dimensionless probability in [0, 1] (UCUM annotation of unity).
PROBABILITY_UNIT = Code("{probability}", "UCUM", "probability")

#: TID 4019 Algorithm Family, PS3.16 CID 7162.
ALGORITHM_FAMILY_AI = Code("123110", "DCM", "Artificial Intelligence")

#: How the heatmap was derived, PS3.16 CID 217 "Visual Explanation".
GRADCAM = Code("130403", "DCM", "Gradient-weighted class activation")

#: Purpose of reference of the SC's Source Image Sequence item, PS3.16 CID 7202.
SOURCE_IMAGE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")

#: Contributing Equipment purpose (the node as processing equipment), PS3.16 CID 7005.
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")

#: Observer type of the SR's device observer, PS3.16 CID 270.
DEVICE_OBSERVER = Code("121007", "DCM", "Device")

#: Language of the SR's content (TID 1204), highdicom's default: RFC 5646 en-US.
LANGUAGE_EN_US = Code("en-US", "RFC5646", "English (United States)")

#: Unit of the Image Library's Rows / Columns descriptors (TID 1602): UCUM pixels.
PIXELS_UNIT = Code("{pixels}", "UCUM", "Pixels")

#: Concept name of an Image Library entry (TID 1601), SCT 260753009 "Source".
IMAGE_LIBRARY_SOURCE = Code("260753009", "SCT", "Source")

#: Concept name of the SR reference to a heatmap SC, PS3.16 CID 7003.
BEST_ILLUSTRATION_OF_FINDING = Code("121080", "DCM", "Best illustration of finding")

#: TID 1500 Procedure Reported (PS3.16 code; CID 100 is extensible).
PROCEDURE_CHEST_IMAGING = Code("413815006", "SCT", "Chest imaging")

#: Anatomic Region Sequence of a heatmap SC whose source states no Body Part Examined
#: (PS3.16 CID 4031; the node only processes images its gate took for chests).
ANATOMIC_REGION_CHEST = Code("51185008", "SCT", "Chest")

#: TID 1500 document title, PS3.16 CID 7021.
REPORT_TITLE = Code("126000", "DCM", "Imaging Measurement Report")

#: TID 1500 row "Qualitative Evaluations": the document-level container holding the
#: study-level conclusion per finding.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

#: Free-text explanation attached to a coded item (PS3.16 CID 12101).
COMMENT = Code("121106", "DCM", "Comment")

#: Value of a finding whose images could not be assessed (PS3.16 CID 3703).
NOT_EVALUATED = Code("373121007", "SCT", "Not Evaluated")

# ---------------------------------------------------------------------------------------
# Images not assessed, intended population
# ---------------------------------------------------------------------------------------

#: Concept name of the coded reason why an image got no finding (private: PS3.16 has no
#: "reason not assessed" concept for an algorithm's input).
NOT_ASSESSED_REASON = Code("NOTASSESSED", PRIVATE_SCHEME, "Image not assessed by the AI model, reason")

#: Concept name of the comparison of an image with the model's intended population (private).
INTENDED_POPULATION = Code("INTENDEDPOP", PRIVATE_SCHEME, "Image within the model's intended population")
#: Values of :data:`INTENDED_POPULATION`: within / outside are private; unknown is
#: SCT 261665006 "Unknown" (PS3.16 CID 3703).
POPULATION_WITHIN = Code("POPWITHIN", PRIVATE_SCHEME, "Within intended population")
POPULATION_OUTSIDE = Code("POPOUTSIDE", PRIVATE_SCHEME, "Outside intended population")
POPULATION_UNKNOWN = Code("261665006", "SCT", "Unknown")

#: One code per :class:`~dicomnode.domain.NotAssessedReason`. NO_IMAGE_CONTENT uses PS3.16
#: DCM 111235 (CID 3114/6044: the image is unusable); no standard concept fits the others,
#: which are private 99DCMNODE codes.
_NOT_ASSESSED: dict[NotAssessedReason, Code] = {
    NotAssessedReason.NOT_CHEST_RADIOGRAPH: Code("NOTCHESTXR", PRIVATE_SCHEME, "Not a frontal chest radiograph"),
    NotAssessedReason.INVERTED_GRAYSCALE: Code("INVERTEDGRAY", PRIVATE_SCHEME, "Grayscale appears inverted"),
    NotAssessedReason.NO_IMAGE_CONTENT: Code("111235", "DCM", "Unusable - Quality renders image unusable"),
    NotAssessedReason.UNDECODABLE: Code("UNDECODABLE", PRIVATE_SCHEME, "Pixel data could not be decoded"),
    NotAssessedReason.OUT_OF_POPULATION: Code("OUTOFPOPULATION", PRIVATE_SCHEME, "Outside the model's intended population"),
    NotAssessedReason.HEADER_NOT_ACCEPTED: Code("HEADERREFUSED", PRIVATE_SCHEME, "Not accepted from its DICOM header"),
}  # fmt: skip


def not_assessed_code(reason: NotAssessedReason) -> Code:
    """The coded reason for an image that got no finding."""
    return _NOT_ASSESSED[reason]


def population_code(status: PopulationStatus) -> Code:
    """The value of :data:`INTENDED_POPULATION` for a population status."""
    return {
        PopulationStatus.WITHIN: POPULATION_WITHIN,
        PopulationStatus.OUTSIDE: POPULATION_OUTSIDE,
        PopulationStatus.UNKNOWN: POPULATION_UNKNOWN,
    }[status]


def normalize_label(label: str) -> str:
    """Canonical spelling of a model label: lower case, words joined by ``_``.

    ``"Pleural Thickening"``, ``"pleural-thickening"`` and ``"PLEURAL_THICKENING"`` all give
    ``"pleural_thickening"``; known aliases (``"pleural_effusion"`` -> ``"effusion"``) are
    resolved.

    Raises:
        ValueError: the label has no letter or digit.
    """
    words = re.findall(r"[a-z0-9]+", label.lower())
    if not words:
        raise ValueError(f"label {label!r} has no letters or digits")
    normal = "_".join(words)
    return _ALIASES.get(normal, normal)


def is_standard_label(label: str) -> bool:
    """True when ``label`` maps to a standard (SCT or DCM) code, not a private one."""
    return _code_for(label).scheme_designator != PRIVATE_SCHEME


def label_to_code(label: str) -> CodedConcept:
    """The coded finding for a model label.

    Args:
        label: the model's label, any spelling :func:`normalize_label` accepts,
            e.g. ``"pneumonia"`` or ``"Pleural_Thickening"``.

    Returns:
        The finding concept (see the module docstring's table). An unknown label gives a
        private ``99DCMNODE`` concept: value = the label in upper case (at most 16
        characters; longer labels are shortened with a hash suffix so they stay unique),
        meaning = the label in words.

    Raises:
        ValueError: the label has no letter or digit.
    """
    from highdicom.sr import CodedConcept

    return CodedConcept.from_code(_code_for(label))


def presence_code(present: bool) -> Code:
    """:data:`PRESENT` or :data:`ABSENT`."""
    return PRESENT if present else ABSENT


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """Coding Scheme Identification item that declares :data:`PRIVATE_SCHEME` in an SR."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name=_PRIVATE_SCHEME_NAME,
        responsible_organization="dicomnode project",
    )


def _code_for(label: str) -> Code:
    normal = normalize_label(label)
    known = _FINDINGS.get(normal)
    if known is not None:
        return known
    value = normal.upper().replace("_", "")
    if len(value) > 16:  # CodeValue is SH: at most 16 characters
        digest = hashlib.sha256(normal.encode("utf-8")).hexdigest()[:5].upper()
        value = f"{value[:10]}-{digest}"
    meaning = normal.replace("_", " ").capitalize()[:64]  # CodeMeaning is LO
    return Code(value, PRIVATE_SCHEME, meaning)
