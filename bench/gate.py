"""Input-gate benchmark: acceptance of validation chests, rejection per negative category, named files.

    .venv/bin/python bench/gate.py [--model default] [--data ../shared/data/kermany_224/train] [--max-val N]

Same as ``dicomnode gate evaluate``; run from the repo root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DICOMNODE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(REPO_ROOT))
from dicomnode.training.gate_eval import evaluate_gate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=SHARED / "kermany_224" / "train")
    parser.add_argument("--dicom-dir", type=Path, default=SHARED / "dicom")
    parser.add_argument("--max-val", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = evaluate_gate(
        args.model,
        args.data if args.data.exists() else None,
        args.dicom_dir if args.dicom_dir.is_dir() else None,
        max_val=args.max_val,
        device=args.device,
    )
    print(report.format())
    if args.json:
        print(json.dumps(report.as_dict()))


if __name__ == "__main__":
    main()
