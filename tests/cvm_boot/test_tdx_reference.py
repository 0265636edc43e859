"""Reference values for a TDX release from a reference boot's quote, and ``tdx-reference``.

The simulated TD stands in for a reference boot (its quotes chain to a generated sim-tdx root);
the real captured quote shows the real path: it verifies to Intel's root and is refused as a
reference because that TD ran with DEBUG on.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from appliance.cmd_release import measure, release, tdx_reference
from attest.errors import ParseError, PolicyError, TransportError, VerificationError
from attest.tdx.abi import TD_ATTRIBUTES_DEBUG
from attest.tdx.sim import TD_ATTRIBUTES_SEPT_VE_DISABLE, SimulatedTdxSigner
from cvm_boot.recipe import parse_recipe
from cvm_boot.tdx_reference import MAX_SOURCE_BYTES, quote_from, reference_values

MRTD = hashlib.sha384(b"reference TD firmware").digest()
RTMRS = tuple(hashlib.sha384(b"reference boot RTMR%d" % i).digest() for i in range(4))
REAL_QUOTE_NOW = datetime(2024, 6, 1, tzinfo=UTC)

app = typer.Typer()
app.command("measure")(measure)
app.command("release")(release)
app.command("tdx-reference")(tdx_reference)
runner = CliRunner()


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> SimulatedTdxSigner:
    return SimulatedTdxSigner.generate(tmp_path_factory.mktemp("tdx"))


@pytest.fixture
def root_pem(signer: SimulatedTdxSigner, tmp_path: Path) -> Path:
    path = tmp_path / "sim-tdx-root.pem"
    path.write_bytes(signer.root_certificate().public_bytes(Encoding.PEM))
    return path


def _quote(signer: SimulatedTdxSigner, **kw: object) -> bytes:
    return signer.sign(report_data=bytes(64), mrtd=MRTD, rtmrs=RTMRS, **kw)  # type: ignore[arg-type]


def _tdx_recipe(make_recipe_text: object, mrtd: bytes | None = MRTD) -> str:
    text: str = make_recipe_text("tdx")  # type: ignore[operator]
    return text + (f'\n[tdx]\nmrtd = "{mrtd.hex()}"\n' if mrtd is not None else "")


def test_a_simulated_reference_gives_mrtd_and_rtmr0_to_2(signer: SimulatedTdxSigner) -> None:
    ref = reference_values(_quote(signer), simulation_roots=[signer.root_certificate()])
    assert ref.simulated and ref.mrtd == MRTD and ref.rtmrs == RTMRS
    assert ref.pins() == {
        "mrtd": MRTD.hex(),
        "rtmr0": RTMRS[0].hex(),
        "rtmr1": RTMRS[1].hex(),
        "rtmr2": RTMRS[2].hex(),
    }
    toml = ref.toml()
    assert toml.startswith("# SIMULATED — NOT CONFIDENTIAL")
    assert "Intel SGX Root CA" in toml  # the chain it verified to (the simulator's look-alike)


def test_the_printed_table_makes_a_recipe_whose_manifest_binds_the_kernel(
    signer: SimulatedTdxSigner, make_recipe_text: object
) -> None:
    ref = reference_values(_quote(signer), simulation_roots=[signer.root_certificate()])
    text: str = make_recipe_text("tdx")  # type: ignore[operator]
    recipe = parse_recipe(text + "\n" + ref.toml(), base_dir=Path("/x"))
    assert recipe.tdx_mrtd == MRTD
    assert dict(recipe.tdx_rtmrs) == {f"rtmr{i}": RTMRS[i] for i in range(3)}


def test_the_real_quote_verifies_to_intel_and_is_refused_for_debug(vectors: Path) -> None:
    raw = (vectors / "tdx" / "quote_v4.dat").read_bytes()
    with pytest.raises(PolicyError, match="DEBUG on"):
        reference_values(raw, now=REAL_QUOTE_NOW)


def test_a_simulated_quote_is_never_taken_for_intels(signer: SimulatedTdxSigner) -> None:
    with pytest.raises(VerificationError, match="no pinned root issued"):
        reference_values(_quote(signer))


def test_a_debug_reference_is_refused(signer: SimulatedTdxSigner) -> None:
    attrs = bytearray(TD_ATTRIBUTES_SEPT_VE_DISABLE)
    attrs[0] |= TD_ATTRIBUTES_DEBUG
    quote = _quote(signer, td_attributes=bytes(attrs))
    with pytest.raises(PolicyError, match="DEBUG on"):
        reference_values(quote, simulation_roots=[signer.root_certificate()])


def test_a_boot_of_other_firmware_is_no_reference(
    signer: SimulatedTdxSigner, make_recipe_text: object
) -> None:
    recipe = parse_recipe(
        _tdx_recipe(make_recipe_text, hashlib.sha384(b"x").digest()), base_dir=Path("/x")
    )
    with pytest.raises(VerificationError, match=r"recipe \[tdx\]\.mrtd"):
        reference_values(
            _quote(signer), simulation_roots=[signer.root_certificate()], recipe=recipe
        )
    snp = parse_recipe(make_recipe_text("sev-snp"), base_dir=Path("/x"))  # type: ignore[operator]
    with pytest.raises(ParseError, match="not a TDX one"):
        reference_values(_quote(signer), simulation_roots=[signer.root_certificate()], recipe=snp)


def test_a_tampered_quote_fails_its_signature(signer: SimulatedTdxSigner) -> None:
    raw = bytearray(_quote(signer))
    raw[48 + 0x148] ^= 1  # a byte of RTMR0 in the signed body
    with pytest.raises(VerificationError, match="tdx-quote-signature"):
        reference_values(bytes(raw), simulation_roots=[signer.root_certificate()])


def test_quote_from_reads_raw_quotes_and_bundles(signer: SimulatedTdxSigner) -> None:
    quote = _quote(signer)
    assert quote_from(quote) == quote
    bundle = {"tee": "sim-tdx", "report": base64.b64encode(quote).decode()}
    assert quote_from(json.dumps(bundle).encode()) == quote


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'{"tee": "sev-snp", "report": ""}', "not a TDX one"),
        (b'{"tee": "tdx"}', "no 'report' string"),
        (b'{"tee": "tdx", "report": "***"}', "not base64"),
        (b"{not json", "does not parse"),
        (b"[1, 2]", None),  # not a bundle and not JSON-looking: parsed as a quote
        (b"x" * (MAX_SOURCE_BYTES + 1), "larger than"),
    ],
)
def test_bad_sources_name_what_is_wrong(data: bytes, says: str | None) -> None:
    if says is None:
        with pytest.raises(ParseError):
            reference_values(quote_from(data))
        return
    with pytest.raises(ParseError, match=says):
        quote_from(data)


# -- the command ----------------------------------------------------------------------------------


def test_cli_prints_the_table_and_json(
    signer: SimulatedTdxSigner, root_pem: Path, tmp_path: Path
) -> None:
    src = tmp_path / "quote.dat"
    src.write_bytes(_quote(signer))
    result = runner.invoke(app, ["tdx-reference", str(src), "--simulated-root", str(root_pem)])
    assert result.exit_code == 0, result.output
    assert "[tdx]" in result.stdout and f'rtmr2 = "{RTMRS[2].hex()}"' in result.stdout
    result = runner.invoke(
        app, ["tdx-reference", str(src), "--simulated-root", str(root_pem), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["rtmr1"] == RTMRS[1].hex() and out["simulated"] is True


def test_cli_errors_are_one_line_with_a_hint(
    signer: SimulatedTdxSigner, root_pem: Path, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["tdx-reference"])
    assert result.exit_code != 0
    assert "give exactly one of SOURCE" in result.output and "hint:" in result.output
    src = tmp_path / "quote.dat"
    src.write_bytes(_quote(signer))
    # Without the simulation root the simulated quote does not chain to Intel: refused.
    result = runner.invoke(app, ["tdx-reference", str(src)])
    assert result.exit_code != 0 and "no pinned root issued" in result.output
    result = runner.invoke(app, ["tdx-reference", str(tmp_path / "missing.dat")])
    assert result.exit_code != 0 and "cannot read" in result.output


def test_cli_fetches_from_a_url(
    signer: SimulatedTdxSigner, root_pem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def fake_fetch(url: str, *, timeout_s: float = 30.0) -> bytes:
        seen.append(url)
        return _quote(signer)

    monkeypatch.setattr("appliance.cmd_release.fetch_quote", fake_fetch)
    result = runner.invoke(
        app, ["tdx-reference", "--url", "http://127.0.0.1:9", "--simulated-root", str(root_pem)]
    )
    assert result.exit_code == 0, result.output
    assert seen == ["http://127.0.0.1:9"]


def test_fetch_quote_reports_an_unreachable_gateway() -> None:
    from cvm_boot.tdx_reference import fetch_quote

    with pytest.raises(TransportError, match="/v1/attestation"):
        fetch_quote("http://127.0.0.1:9", timeout_s=2.0)


def test_measure_and_release_warn_while_rtmrs_are_unpinned(
    make_recipe_text: object, tmp_path: Path
) -> None:
    recipe = tmp_path / "tdx.toml"
    recipe.write_text(_tdx_recipe(make_recipe_text))
    result = runner.invoke(app, ["measure", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unpinned_rtmrs"] == ["rtmr0", "rtmr1", "rtmr2"]
    result = runner.invoke(
        app, ["release", str(recipe), "--log-dir", str(tmp_path / "log"), "--new-log"]
    )
    assert result.exit_code == 0, result.output
    assert "RTMR0, RTMR1, RTMR2 not pinned" in result.output
    assert "tdx-reference" in result.output
    pinned = _tdx_recipe(make_recipe_text) + "".join(
        f'rtmr{i} = "{RTMRS[i].hex()}"\n' for i in range(3)
    )
    recipe.write_text(pinned)
    result = runner.invoke(app, ["measure", str(recipe), "--json"])
    assert json.loads(result.stdout)["unpinned_rtmrs"] == []


# -- fetching from a live node: fresh for our nonce, bound to its bundle ------------------------


class _Node:
    """FAKE NODE: serves /v1/attestation from a thread; ``mode`` breaks one thing."""

    def __init__(self, signer: SimulatedTdxSigner, mode: str = "good") -> None:
        import http.server
        import threading
        from urllib.parse import parse_qs, urlparse

        from attest import binding

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                nonce_hex = parse_qs(urlparse(self.path).query)["nonce"][0]
                nonce = bytes.fromhex(nonce_hex)
                manifest = {"measurement": MRTD.hex()}
                bundle: dict[str, object] = {
                    "tee": "sim-tdx",
                    "key_config": base64.b64encode(b"key config").decode(),
                    "gpus": [],
                    "manifest": manifest,
                    "nonce": nonce_hex if mode != "no-echo" else None,
                }
                bound = nonce if mode != "stale" else bytes(32)
                rd = binding.report_data(
                    key_config=b"key config",
                    gpus=[],
                    manifest=manifest,
                    nonce=bound,
                )
                quote = signer.sign(report_data=rd, mrtd=MRTD, rtmrs=RTMRS)
                bundle["report"] = base64.b64encode(quote).decode()
                body = json.dumps(bundle).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("mode", "says"),
    [("good", None), ("no-echo", "does not echo our nonce"), ("stale", "not a fresh quote")],
)
def test_fetch_quote_takes_only_a_fresh_bound_quote(
    signer: SimulatedTdxSigner, mode: str, says: str | None
) -> None:
    from cvm_boot.tdx_reference import fetch_quote

    node = _Node(signer, mode)
    try:
        if says is None:
            quote = fetch_quote(node.url, timeout_s=5.0)
            ref = reference_values(quote, simulation_roots=[signer.root_certificate()])
            assert ref.rtmrs == RTMRS
        else:
            with pytest.raises(VerificationError, match=says):
                fetch_quote(node.url, timeout_s=5.0)
    finally:
        node.close()
