"""Building one heatmap SC (1024 x 1024 overlay) plus one SR stays well under 100 ms."""

from __future__ import annotations

import time

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.config import OutputSettings
from dicomnode.domain import ModelIdentity, Prediction
from dicomnode.outputs.sc import build_heatmap_sc
from dicomnode.outputs.sr import build_findings_sr


def test_one_sc_and_one_sr_build_under_100_ms(
    cxr_dataset: Dataset, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    overlay = np.random.default_rng(0).integers(0, 256, size=(1024, 1024, 3), dtype=np.uint8)
    prediction = Prediction(labels=("pneumonia",), probabilities=(0.75,), thresholds=(0.5,))

    def build() -> None:
        heatmap = build_heatmap_sc(
            cxr_dataset, overlay, series_instance_uid="1.2.3.1", series_number=9901, instance_number=1,
            settings=output_settings, identity=identity,
        )  # fmt: skip
        build_findings_sr(
            [cxr_dataset], [prediction], [heatmap], series_instance_uid="1.2.3.2", series_number=9902,
            settings=output_settings, identity=identity,
        )  # fmt: skip

    build()  # first call pays for importing highdicom
    timings = []
    for _ in range(7):
        start = time.perf_counter()
        build()
        timings.append(time.perf_counter() - start)
    # the best of 7 runs: robust against other processes on a shared machine
    assert min(timings) < 0.100, f"SC + SR build took {min(timings) * 1000:.1f} ms at best"
