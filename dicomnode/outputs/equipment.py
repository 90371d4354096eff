"""Who made a result object: the equipment attributes the SC and the SR share.

General Equipment (the node: Manufacturer, Manufacturer's Model Name "dicomnode",
Software Versions of the node and of the model, Institution Name) and one Contributing
Equipment item (PS3.3 C.7.5.1.1.1: purpose "Processing Equipment") naming the model, its
version, architecture and weights. Passed to highdicom's SOP class constructors as
keyword arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dicomnode import __version__
from dicomnode.config import OutputSettings
from dicomnode.domain import ModelIdentity
from dicomnode.outputs import codes

if TYPE_CHECKING:
    from highdicom import ContentQualificationValues

NODE_MODEL_NAME = "dicomnode"
"""Manufacturer's Model Name of every object the node makes."""


def equipment_arguments(settings: OutputSettings, identity: ModelIdentity, contribution: str) -> dict[str, Any]:
    """Keyword arguments of highdicom's ``SCImage`` / ``ComprehensiveSR`` for the equipment.

    Args:
        settings: labelling of result objects (manufacturer, institution).
        identity: the model that produced the content.
        contribution: what the model did for this object, e.g. ``"AI inference"``.
    """
    from highdicom import ContributingEquipment

    return {
        "manufacturer": settings.manufacturer,
        "manufacturer_model_name": NODE_MODEL_NAME,
        "software_versions": [f"dicomnode {__version__}", f"{identity.name} {identity.version}"],
        "institution_name": settings.institution_name,
        "contributing_equipment": [
            ContributingEquipment(
                manufacturer=settings.manufacturer,
                purpose_of_reference=codes.PROCESSING_EQUIPMENT,
                manufacturer_model_name=identity.name,
                software_versions=identity.version,
                institution_name=settings.institution_name,
                contribution_description=(
                    f"{contribution}: model {identity.name} {identity.version}, architecture "
                    f"{identity.architecture}, weights sha256 {identity.weights_sha256}"
                ),
            )
        ],
    }


def content_qualification(value: str) -> ContentQualificationValues:
    """DICOM Content Qualification (PS3.3 C.8.13.2) of a setting.

    Raises:
        ValueError: not PRODUCT, RESEARCH or SERVICE.
    """
    from highdicom import ContentQualificationValues

    try:
        return ContentQualificationValues(value)
    except ValueError:
        terms = ", ".join(v.value for v in ContentQualificationValues)
        raise ValueError(f"content qualification {value!r} is not a DICOM defined term ({terms})") from None
