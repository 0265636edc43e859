"""AMD CRLs as reference values: ``[snp] crls`` in policy.toml, checked in the bundle's chain."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from attest.bundle import ClientPolicy
from attest.errors import ParseError, VerificationError
from attest.sevsnp.validate import SnpPolicy
from client_cli.trust import load_policy_file, reference_summary


def _run(node: Any, policy: ClientPolicy) -> Any:
    session = node.session(node.transport(), policy=policy)

    async def go() -> Any:
        try:
            return await session.verify()
        finally:
            await session.aclose()

    return asyncio.run(go())


def _chain_detail(run: Any) -> str:
    return next(c.detail for c in run.checks if c.name == "cert-chain")  # type: ignore[no-any-return]


def test_without_crls_the_chain_detail_says_revocation_was_not_checked(sim_node: Any) -> None:
    run = _run(sim_node, ClientPolicy(snp=SnpPolicy()))
    assert run.ok
    assert "revocation not checked (no [snp] crls in the policy)" in _chain_detail(run)


def test_a_crl_of_the_nodes_ark_is_checked(sim_node: Any) -> None:
    run = _run(sim_node, ClientPolicy(snp=SnpPolicy(), snp_crls=(sim_node.snp.crl(),)))
    assert run.ok, run.to_dict()
    assert "not revoked per CRL of" in _chain_detail(run)


def test_a_revoked_ask_fails_the_chain(sim_node: Any) -> None:
    # AMD's CRL is the ARK's: it lists revoked ASKs/ASVKs (VCEKs are not revoked that way).
    serial = sim_node.snp.certificates()[1].serial_number
    crl = sim_node.snp.crl([serial])
    run = _run(sim_node, ClientPolicy(snp=SnpPolicy(), snp_crls=(crl,)))
    assert not run.ok and isinstance(run.error, VerificationError)
    assert run.error.check == "cert-chain" and "revoked" in str(run.error)


def test_a_crl_from_another_ark_is_no_revocation_check(sim_node: Any) -> None:
    run = _run(sim_node, ClientPolicy(snp=SnpPolicy(), snp_crls=(sim_node.other_snp.crl(),)))
    assert not run.ok and isinstance(run.error, VerificationError)
    assert run.error.check == "cert-chain"


# -- the policy file ------------------------------------------------------------------------------


def test_policy_file_loads_crls_relative_to_itself(sim_node: Any, tmp_path: Path) -> None:
    (tmp_path / "milan.crl").write_bytes(sim_node.snp.crl())
    path = tmp_path / "policy.toml"
    path.write_text('[snp]\ncrls = ["milan.crl"]\n')
    policy, files = load_policy_file(path)
    assert policy.snp == SnpPolicy()  # a table of CRLs only keeps the floor
    assert len(policy.snp_crls) == 1
    assert files.snp_crls == ((tmp_path / "milan.crl").resolve(),)
    summary = reference_summary(policy, files)
    crls: Any = summary["snp_crls"]
    [entry] = crls
    assert entry["file"] == str((tmp_path / "milan.crl").resolve())
    assert entry["revoked"] == 0 and "OpenPCC" in entry["issuer"]


@pytest.mark.parametrize(
    ("text", "files", "says"),
    [
        ('[snp]\ncrls = "milan.crl"\n', {}, "crls must be a non-empty list"),
        ("[snp]\ncrls = []\n", {}, "crls must be a non-empty list"),
        ('[snp]\ncrls = ["missing.crl"]\n', {}, "cannot read"),
        ('[snp]\ncrls = ["junk.crl"]\n', {"junk.crl": b"junk"}, "not a CRL"),
    ],
    ids=["not-a-list", "empty", "missing", "garbage"],
)
def test_bad_crl_entries_are_one_line_errors(
    tmp_path: Path, text: str, files: dict[str, bytes], says: str
) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ParseError, match=says) as err:
        load_policy_file(path)
    assert "\n" not in str(err.value)
