"""The key the client encrypts to can only come from a verified bundle."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from attest.bundle import ClientPolicy, VerifiedNode, verify_bundle
from attest.sevsnp.validate import SnpPolicy
from client_cli.session import seal_request
from server.keys import KeyRing
from server.ohttp import KeyConfig


@pytest.fixture(scope="module")
def verified(sim_node: Any) -> VerifiedNode:
    nonce = bytes(range(32))
    return verify_bundle(
        sim_node.bundle(nonce),
        trust=sim_node.anchors(),
        policy=ClientPolicy(snp=SnpPolicy()),
        nonce=nonce,
    )


def _fields(node: VerifiedNode, **changes: object) -> dict[str, object]:
    values = {f.name: getattr(node, f.name) for f in dataclasses.fields(node) if f.name != "_token"}
    return {**values, **changes}


def test_seal_request_encrypts_to_the_verified_key(sim_node: Any, verified: VerifiedNode) -> None:
    enc, _opener = seal_request(verified, "POST", "/v1/chat/completions", b'{"secret": 1}')
    assert enc[0] == verified.key_config.key_id == sim_node.keys.current_config.key_id
    assert b"secret" not in enc


@pytest.mark.parametrize(
    "impostor",
    [
        pytest.param(lambda n: SimpleNamespace(**_fields(n)), id="duck-typed"),
        pytest.param(lambda n: n.key_config, id="key-config"),
        pytest.param(lambda n: base64.b64encode(n.key_config_raw), id="raw-bytes"),
        pytest.param(lambda n: None, id="none"),
    ],
)
def test_seal_request_refuses_anything_but_a_verified_node(
    verified: VerifiedNode, impostor: Any
) -> None:
    with pytest.raises(TypeError, match="needs a VerifiedNode"):
        seal_request(impostor(verified), "POST", "/v1/chat/completions", b"{}")


def test_a_verified_node_cannot_be_constructed_directly(verified: VerifiedNode) -> None:
    attacker = KeyRing().current_config
    with pytest.raises(TypeError, match="only produced by"):
        VerifiedNode(**_fields(verified, key_config=attacker))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="only produced by"):
        VerifiedNode(**_fields(verified), _token=object())  # type: ignore[arg-type]


def test_a_verified_node_is_frozen(verified: VerifiedNode) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.key_config = KeyConfig.parse(KeyRing().current_config.encode())  # type: ignore[misc]


def test_replace_cannot_mint_a_verified_node_with_another_key(verified: VerifiedNode) -> None:
    attacker = KeyRing().current_config
    with pytest.raises(TypeError):
        dataclasses.replace(verified, key_config=attacker, verified_at=datetime.now(UTC))
