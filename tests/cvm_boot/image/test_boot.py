"""Build the test-only image variant and boot it under QEMU/TCG (no KVM, no TEE).

Slow: the first run builds the image (about a minute here, more on a cold CI cache); later runs
find it in ~/.cache/openpcc/images and only boot (~30 s to /healthz under TCG). The client side
is real: the bundle is verified by the real verifier, trusting only the simulation roots and the
log key produced by this provisioning, and one answer comes back encrypted through OHTTP.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from attest.bundle import ClientPolicy, TrustAnchors
from attest.sevsnp.validate import SnpPolicy
from attest.sevsnp.verify import load_certificates
from attest.tlog import VerifierKey
from client_cli.session import Session
from cvm_boot.image.build import BuildResult, build_image
from cvm_boot.image.provision import Provisioned, provision_simulated
from cvm_boot.image.run import EmulatedVm, missing_tools, start_vm, stop_vm
from cvm_boot.image.spec import load_image_recipe

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
BOOT_TIMEOUT_S = 240.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def built() -> BuildResult:
    missing = missing_tools()
    if missing:
        pytest.skip("image build/boot needs " + ", ".join(missing) + "; install.sh --dev adds them")
    return build_image(load_image_recipe(HERE / "image-test.toml"))


@pytest.fixture(scope="module")
def booted(
    built: BuildResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EmulatedVm, Provisioned, float]]:
    state = tmp_path_factory.mktemp("vm")
    prov = provision_simulated(built.directory, state / "provision")
    started = time.monotonic()
    vm = start_vm(built.directory, prov.image, host_port=_free_port(), state_dir=state)
    try:
        deadline = started + BOOT_TIMEOUT_S
        while True:
            try:
                if httpx.get(vm.url + "/healthz", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no healthy gateway in {BOOT_TIMEOUT_S:g}s; serial console:\n"
                    + vm.serial_log.read_text(errors="replace")[-4000:]
                )
            time.sleep(0.5)
        yield vm, prov, time.monotonic() - started
    finally:
        stop_vm(state)


def test_image_is_sealed_and_recorded(built: BuildResult) -> None:
    info = json.loads((built.directory / "build.json").read_text())
    manifest = json.loads((built.directory / "manifest.json").read_text())
    assert manifest["volumes"]["root"]["root_hash"] == built.root_hash.hex() == info["root_hash"]
    assert info["outputs"]["vmlinuz"]["sha256"] == manifest["launch"]["kernel_sha256"]
    assert info["outputs"]["initrd.img"]["sha256"] == manifest["launch"]["initrd_sha256"]
    assert f"roothash={built.root_hash.hex()}" in manifest["launch"]["cmdline"]
    names = {d["name"] for d in info["debian"]["root"]}
    assert "python3.11-minimal" in names
    assert not names & {
        "dash",
        "bash",
        "busybox",
        "busybox-static",
        "dpkg",
        "apt",
        "openssh-server",
    }


def test_boots_attests_and_answers_encrypted(
    booted: tuple[EmulatedVm, Provisioned, float],
) -> None:
    vm, prov, boot_s = booted
    print(f"\nboot to /healthz under {vm.accel}: {boot_s:.1f}s")
    sim_roots = tuple(load_certificates(prov.sim_trust.read_bytes()))
    trust = TrustAnchors(
        amd_roots=(),
        nvidia_roots=(),
        log_keys=(VerifierKey.parse(prov.log_vkey),),
        simulation_snp_roots=sim_roots,
        simulation_gpu_roots=sim_roots,
    )

    async def go() -> tuple[bytes, dict[str, object]]:
        async with Session(vm.url, trust=trust, policy=ClientPolicy(snp=SnpPolicy())) as s:
            run = await s.verify()
            assert run.node is not None, run.error
            assert run.node.simulated and run.node.tee == "sim-sev-snp"
            status, body = await s.request_json(
                "POST",
                "/v1/chat/completions",
                {
                    "model": "openpcc-model",
                    "messages": [{"role": "user", "content": "inside the sealed image"}],
                    "max_tokens": 3,
                },
            )
            assert status == 200
            return run.node.measurement, body

    t0 = time.monotonic()
    measurement, body = asyncio.run(go())
    print(f"verify + first encrypted answer: {time.monotonic() - t0:.1f}s")
    choices = body["choices"]
    assert isinstance(choices, list)
    text = choices[0]["message"]["content"]
    assert text.startswith("echo:") and "image" in text
    assert measurement.hex() == json.loads(prov.manifest.read_text())["measurement"]
