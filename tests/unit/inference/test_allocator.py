"""keep_tensor_memory: glibc's thresholds are set where there is glibc, nothing breaks elsewhere."""

from __future__ import annotations

import platform
import sys

from dicomnode.inference.allocator import keep_tensor_memory


def test_thresholds_are_set_on_glibc_and_setting_them_again_is_harmless() -> None:
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_tensor_memory() is on_glibc
    assert keep_tensor_memory() is on_glibc
