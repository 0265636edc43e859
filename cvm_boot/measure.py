"""Expected launch measurements, recomputed from a recipe.

- ``sev-snp``: the SEV-SNP launch digest (48 bytes) from ``sev-snp-measure`` used as a library:
  firmware pages, the SNP metadata sections, the kernel-hashes page (SHA-256 of kernel, initrd and
  the NUL-terminated command line, as QEMU's ``kernel-hashes=on`` builds it) and one VMSA per vCPU.
  Measured direct boot needs firmware built from OVMF's ``AmdSev`` package
  (``OvmfPkg/AmdSev/AmdSevX64.dsc``), which carries the SNP kernel-hashes metadata section;
  distribution OVMF builds (Debian's ``ovmf``) do not, and are refused with that hint.
- ``sim-sev-snp``: ``SHA-384(SIM_DOMAIN || canonical_json(manifest["launch"]))``; no firmware,
  kernel or initrd files are needed and a client recomputes it from the manifest alone.
- ``tdx``: see ``tdx_expectations``. MRTD depends on how the TDX module adds and extends the
  TDVF firmware's metadata sections; this module does not replay that, so a TDX recipe pins
  ``[tdx].mrtd`` from a reference launch of the same firmware, and RTMR[0..2] (firmware
  configuration, kernel, command line and initrd) from a reference boot of the image
  (``openpcc-appliance tdx-reference``); clients refuse a TD whose RTMR0-2 are not bound.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sevsnpmeasure import guest as snp_guest
from sevsnpmeasure import vcpu_types
from sevsnpmeasure.ovmf import OVMF, SectionType
from sevsnpmeasure.sev_mode import SevMode

from attest.errors import ParseError, VerificationError
from attest.tdx.validate import BOUND_RTMRS
from cvm_boot.manifest import canonical_json, launch_inputs
from cvm_boot.recipe import Artifact, Recipe

__all__ = [
    "AMDSEV_FIRMWARE_HINT",
    "MEASUREMENT_SIZE",
    "SIM_DOMAIN",
    "TDX_REFERENCE_HINT",
    "TdxExpectation",
    "expected_measurement",
    "firmware_has_kernel_hashes",
    "simulated_measurement",
    "snp_launch_digest",
    "tdx_expectations",
]

MEASUREMENT_SIZE = 48
SIM_DOMAIN = b"openpcc/sim-launch-measurement/v1\x00"
AMDSEV_FIRMWARE_HINT = (
    "build OVMF from edk2's OvmfPkg/AmdSev/AmdSevX64.dsc (it carries the SNP kernel-hashes "
    "section) and point [firmware].path at the resulting OVMF.fd; Debian's ovmf package has none"
)
# What sev-snp-measure raises on firmware it cannot use (it has no error type of its own).
_MEASURE_ERRORS = (RuntimeError, ValueError, KeyError, IndexError, AssertionError)


def simulated_measurement(launch: Mapping[str, object]) -> bytes:
    """The simulated appliance's measurement of ``launch`` (a manifest's ``launch`` object)."""
    return hashlib.sha384(SIM_DOMAIN + canonical_json(dict(launch))).digest()


def _checked_file(art: Artifact, what: str) -> str:
    if art.path is None:
        raise ParseError(f"recipe: [{what}].path is required to measure a real launch")
    try:
        data = art.path.read_bytes()
    except OSError as e:
        raise ParseError(f"cannot read {what} {art.path}: {e.strerror}") from e
    got = hashlib.sha256(data).digest()
    if got != art.sha256:
        raise VerificationError(
            "recipe-digest",
            f"{what} {art.path} has SHA-256 {got.hex()}, recipe says {art.sha256.hex()}",
        )
    return str(art.path)


def firmware_has_kernel_hashes(path: Path) -> bool:
    """Whether the firmware carries the SNP kernel-hashes metadata section (AmdSev builds)."""
    try:
        ovmf = OVMF(str(path))
        return bool(ovmf.has_metadata_section(SectionType.SNP_KERNEL_HASHES))
    except OSError as e:
        raise ParseError(f"cannot read firmware {path}: {e.strerror}") from e
    except _MEASURE_ERRORS as e:
        raise ParseError(f"{path} is not an SEV-capable OVMF image: {e}") from e


def snp_launch_digest(
    firmware: Path,
    *,
    vcpus: int,
    vcpu_type: str,
    guest_features: int,
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str = "",
) -> bytes:
    """The SEV-SNP launch digest of a QEMU guest; firmware-only when ``kernel`` is None."""
    sig = vcpu_types.CPU_SIGS.get(vcpu_type)
    if sig is None:
        raise ParseError(f"unknown SEV-SNP vCPU type {vcpu_type!r}")
    if kernel is not None and not firmware_has_kernel_hashes(firmware):
        raise ParseError(f"{firmware} has no SNP kernel-hashes section", hint=AMDSEV_FIRMWARE_HINT)
    try:
        digest = snp_guest.calc_launch_digest(
            SevMode.SEV_SNP,
            vcpus,
            sig,
            str(firmware),
            str(kernel) if kernel is not None else None,
            str(initrd) if initrd is not None else None,
            cmdline if kernel is not None else None,
            guest_features,
        )
    except OSError as e:
        raise ParseError(f"cannot read launch inputs: {e}") from e
    except _MEASURE_ERRORS as e:
        raise ParseError(f"sev-snp-measure refused {firmware}: {e}") from e
    if not isinstance(digest, bytes) or len(digest) != MEASUREMENT_SIZE:
        raise ParseError("sev-snp-measure returned a digest of the wrong size")
    return digest


@dataclass(frozen=True, slots=True)
class TdxExpectation:
    """What a TDX quote is checked against: MRTD and the runtime registers the recipe pins."""

    mrtd: bytes
    rtmrs: tuple[tuple[str, bytes], ...]
    notes: tuple[str, ...]

    @property
    def unbound(self) -> tuple[str, ...]:
        """Of RTMR0-2 (what a client requires bound), the ones this recipe does not pin."""
        pinned = {name for name, _ in self.rtmrs}
        return tuple(n for n in BOUND_RTMRS if n not in pinned)


TDX_REFERENCE_HINT = (
    "boot this release once on a TDX host you trust, then run `openpcc-appliance tdx-reference "
    "--url http://127.0.0.1:PORT` (or give it the quote) and paste the [tdx] table it prints "
    "into the recipe"
)


def tdx_expectations(recipe: Recipe) -> TdxExpectation:
    if recipe.tee != "tdx":
        raise ParseError(f"recipe {recipe.name} is not a TDX recipe")
    if recipe.tdx_mrtd is None:
        raise ParseError("recipe: a TDX recipe needs [tdx].mrtd", hint=TDX_REFERENCE_HINT)
    pinned = dict(recipe.tdx_rtmrs)
    what = {
        "rtmr0": "firmware configuration the host supplies (TD HOB, ACPI tables)",
        "rtmr1": "kernel image (PE/Authenticode digest) and EFI boot events",
        "rtmr2": "kernel command line (with both dm-verity root hashes) and initrd",
        "rtmr3": "extended by the TD at run time (not used by this image)",
    }
    notes = [
        "MRTD: pinned from a reference launch of firmware "
        f"{recipe.firmware.sha256.hex()} (TDVF page-add/extend replay is not implemented)"
    ]
    for name, meaning in what.items():
        state = "pinned from a reference boot" if name in pinned else "NOT pinned"
        if name == "rtmr3" and name not in pinned:
            state = "not pinned"
        notes.append(f"{name.upper()}: {meaning}; {state}")
    notes.append(
        "RTMR values are not predicted from the recipe (no CCEL event-log replay yet): they are "
        "taken from a reference boot whose quote chains to Intel"
    )
    return TdxExpectation(mrtd=recipe.tdx_mrtd, rtmrs=recipe.tdx_rtmrs, notes=tuple(notes))


def expected_measurement(recipe: Recipe) -> bytes:
    """The 48-byte launch measurement a genuine guest built from ``recipe`` reports."""
    if recipe.tee == "sim-sev-snp":
        return simulated_measurement(launch_inputs(recipe))
    if recipe.tee == "tdx":
        return tdx_expectations(recipe).mrtd
    firmware = _checked_file(recipe.firmware, "firmware")
    kernel = _checked_file(recipe.kernel, "kernel")
    initrd = _checked_file(recipe.initrd, "initrd")
    return snp_launch_digest(
        Path(firmware),
        vcpus=recipe.vcpus,
        vcpu_type=recipe.vcpu_type,
        guest_features=recipe.guest_features,
        kernel=Path(kernel),
        initrd=Path(initrd),
        cmdline=recipe.cmdline,
    )
