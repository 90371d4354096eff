"""Result objects: the Grad-CAM Secondary Capture, the TID 1500 findings SR, and the gate
that validates both before they are stored or sent.

Importing this package is cheap: highdicom is imported on first use of a builder.
"""

from dicomnode.outputs.codes import label_to_code as label_to_code
from dicomnode.outputs.sc import build_heatmap_sc as build_heatmap_sc
from dicomnode.outputs.sr import build_findings_sr as build_findings_sr
from dicomnode.outputs.sr import device_observer_uid as device_observer_uid
from dicomnode.outputs.uids import derived_uid as derived_uid
from dicomnode.outputs.uids import new_uid as new_uid
from dicomnode.outputs.validate import validate_result as validate_result

__all__ = [
    "build_findings_sr",
    "build_heatmap_sc",
    "derived_uid",
    "device_observer_uid",
    "label_to_code",
    "new_uid",
    "validate_result",
]
