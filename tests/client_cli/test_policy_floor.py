"""What the client enforces when its policy names nothing: the SEV-SNP floor.

DEBUG and MIGRATE_MA off always (a policy may not relax them), VMPL 0 unless the policy names
VMPLs, and whatever the policy does not check (minimum TCB, minimum ABI) named as not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from attest.bundle import ClientPolicy
from attest.errors import ParseError, PolicyError
from attest.sevsnp.validate import SnpPolicy

NONCE = bytes(range(32))


def _vmpl1(node: Any, b: dict[str, Any], nonce: bytes | None) -> dict[str, Any]:
    return node.rebind(b, nonce, vmpl=1)  # type: ignore[no-any-return]


def _run(node: Any, mutate: Any = None, policy: ClientPolicy | None = None) -> Any:
    import asyncio

    session = node.session(node.transport(mutate), policy=policy)

    async def go() -> Any:
        try:
            return await session.verify()
        finally:
            await session.aclose()

    return asyncio.run(go())


def test_a_report_from_vmpl_1_is_refused_by_default(sim_node: Any) -> None:
    run = _run(sim_node, _vmpl1)
    assert not run.ok and isinstance(run.error, PolicyError)
    assert run.error.check == "policy"
    assert "VMPL is 1, policy allows [0]" in str(run.error)


def test_a_policy_naming_vmpls_replaces_the_floor(sim_node: Any) -> None:
    run = _run(sim_node, _vmpl1, ClientPolicy(snp=SnpPolicy(vmpls=(0, 1))))
    assert run.ok
    assert "VMPL 1 is allowed" in next(c.detail for c in run.checks if c.name == "policy")


def test_the_default_policy_says_what_it_did_not_check(sim_node: Any) -> None:
    run = _run(sim_node)
    detail = next(c.detail for c in run.checks if c.name == "policy")
    assert "VMPL 0 is allowed" in detail
    assert (
        "not checked: minimum TCB, minimum firmware ABI (no [snp] min_tcb / min_abi in the policy)"
        in detail
    )
    full = ClientPolicy(snp=SnpPolicy(min_abi=(0, 0)))
    detail = next(c.detail for c in _run(sim_node, policy=full).checks if c.name == "policy")
    assert "not checked: minimum TCB (no [snp] min_tcb in the policy)" in detail


@pytest.mark.parametrize("field", ["allow_debug", "allow_migrate_ma"])
def test_a_client_policy_never_relaxes_debug_or_migration(field: str) -> None:
    with pytest.raises(ParseError, match="may not allow debug or a migration agent"):
        ClientPolicy(snp=SnpPolicy(**{field: True}))


def test_gpu_require_cc_is_on_unless_the_policy_file_says_otherwise(tmp_path: Any) -> None:
    from client_cli.trust import load_policy

    path = tmp_path / "policy.toml"
    path.write_text("[gpu]\nmin_gpus = 1\n")
    assert load_policy(path).require_gpu_cc is True
    path.write_text("[gpu]\nrequire_cc = false\n")
    assert load_policy(path).require_gpu_cc is False
    path.write_text('[gpu]\nrequire_cc = "no"\n')
    with pytest.raises(ParseError, match=r"\[gpu\] require_cc must be true or false"):
        load_policy(path)


def test_a_named_policy_that_does_not_exist_is_an_error_not_the_floor(tmp_path: Path) -> None:
    """`--policy strcit.toml` (a typo) used to verify against the floor and send the prompt."""
    from attest.errors import ParseError
    from client_cli.trust import load_policy

    with pytest.raises(ParseError, match="no such file"):
        load_policy(tmp_path / "strcit.toml", required=True)
    # The store's own policy.toml may be absent (the floor) but not a link to nothing.
    assert load_policy(tmp_path / "policy.toml").skip == frozenset()
    (tmp_path / "policy.toml").symlink_to(tmp_path / "gone.toml")
    with pytest.raises(ParseError, match="a link to nothing"):
        load_policy(tmp_path / "policy.toml")


def test_unreadable_trust_store_files_are_one_line_naming_them(tmp_path: Path) -> None:
    from attest.errors import ParseError
    from client_cli.trust import TrustStore

    store = TrustStore(tmp_path)
    store.log_keys_path.mkdir()  # a folder where a file should be
    with pytest.raises(ParseError, match=r"trust store .*log-keys.txt"):
        store.log_keys()
    store.simulation_path.write_bytes(b"\xff not pem")
    with pytest.raises(ParseError, match=r"trust store .*simulation-roots.pem"):
        store.simulation_roots()
