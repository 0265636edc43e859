"""The SIMULATED GPU's reference values: what :mod:`attest.nvgpu.sim` measures and what
:mod:`attest.nvgpu.verify` holds SIMULATED evidence to.

NVIDIA publishes no RIM for a simulated GPU, so these stand in for one and are selected the way a
RIM is, by the report's driver version. Nothing here is confidential.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "SIMULATED_BLOCKS",
    "SIMULATED_CC_STATE_BLOCK",
    "SIMULATED_DRIVER_VERSION",
    "SIMULATED_REFERENCE",
    "SIMULATED_VBIOS",
    "simulated_measurement",
]

SIMULATED_DRIVER_VERSION = "550.90.07-SIMULATED"
SIMULATED_VBIOS = bytes.fromhex("009f009601000000")  # displays as 96.00.9f.00.01
SIMULATED_BLOCKS = 8
#: The block a simulated GPU outside CC mode measures differently. NVIDIA names no such index for
#: real GPUs; it documents only that DevTools mode makes measurements differ from its RIMs.
SIMULATED_CC_STATE_BLOCK = SIMULATED_BLOCKS


def simulated_measurement(index: int, *, cc_enabled: bool = True) -> bytes:
    """SPDM block ``index`` (1-based) of a SIMULATED GPU in CC mode, or outside it."""
    label = b"SIMULATED measurement %d" % index
    if not cc_enabled and index == SIMULATED_CC_STATE_BLOCK:
        label += b" (CC off)"
    return hashlib.sha384(label).digest()


SIMULATED_REFERENCE: Mapping[int, bytes] = MappingProxyType(
    {i: simulated_measurement(i) for i in range(1, SIMULATED_BLOCKS + 1)}
)
