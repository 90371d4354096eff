"""dicomnode: a DICOM-native AI node for chest X-rays.

C-STORE in -> durable queue -> scheduled batch inference -> Grad-CAM Secondary
Capture + TID 1500 Structured Report -> C-STORE back to the PACS.

Importing this package has no side effects: no engine, AE, model or logging
set-up is built at import time.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
