"""``openpcc``: verify a node, then talk to it through the encrypted channel.

Exit codes: 0 success; 2 network or server failure; 3 unparsable evidence or input; 4 a signature,
chain, binding or proof failed; 5 policy violation; 6 decryption failed; 1 anything else.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.parse
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from attest.bundle import VerificationRun
from attest.errors import (
    OpenPCCError,
    ParseError,
    PolicyError,
    VerificationError,
    exit_code_for,
)
from client_cli.render import SIMULATED_BANNER, print_run, status_line
from client_cli.session import (
    Session,
)
from client_cli.trust import TrustStore, load_policy, load_policy_file, reference_summary
from client_cli.verify_gpu_tdx import verify_gpu, verify_tdx
from client_cli.verify_report import verify_report

__all__ = ["app"]

DEFAULT_URL = "http://127.0.0.1:8480"

app = typer.Typer(
    name="openpcc",
    help="Verify a confidential LLM node for yourself, then chat with it through HPKE encryption.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()
T = TypeVar("T")

app.command("verify-report")(verify_report)
app.command("verify-gpu")(verify_gpu)
app.command("verify-tdx")(verify_tdx)

UrlOpt = typer.Option(None, "--url", help="gateway or relay URL [env OPENPCC_URL]")
PolicyOpt = typer.Option(None, "--policy", help="policy TOML (default: the trust store's)")


def _url(url: str | None) -> str:
    """The node's URL (``--url``, ``$OPENPCC_URL``, or the local appliance), checked up front:
    a malformed one is one line, exit 3, not a traceback from deep inside a client."""
    target = url or os.environ.get("OPENPCC_URL") or DEFAULT_URL
    try:
        parts = urllib.parse.urlsplit(target)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
    except ValueError as e:
        raise _fail(ParseError(f"URL {target!r}: {e}", hint="http(s)://HOST[:PORT]")) from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(ParseError(f"URL {target!r} is not http(s)://HOST[:PORT]"))
    return target


def _failed_check(run: VerificationRun | None) -> str | None:
    if run is None:
        return None
    return next((c.name for c in run.checks if c.status == "fail"), None)


def _hint(e: OpenPCCError) -> str:
    if e.hint:
        return e.hint
    if isinstance(e, VerificationError | PolicyError):
        return "`openpcc verify` shows every check"
    return ""


def _fail(
    e: OpenPCCError, json_out: bool = False, run: VerificationRun | None = None
) -> typer.Exit:
    """One line saying what failed (and a hint), or one JSON object; the class's exit code."""
    check = _failed_check(run)
    if json_out:
        obj: dict[str, object] = {"ok": False, "error": str(e), "kind": type(e).__name__}
        if check is not None:
            obj["check"] = check
        obj["hint"] = _hint(e)
        print(json.dumps(obj))
    else:
        message = str(e)
        if check is not None and not message.startswith(check + ":"):
            message = f"{check}: {message}"  # the contract's check name, e.g. "policy: vmpl: …"
        # soft_wrap: a long message stays one line, whatever the terminal's width.
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        if _hint(e):
            err.print(f"[dim]hint: {escape(_hint(e))}[/]", highlight=False, soft_wrap=True)
    return typer.Exit(exit_code_for(e))


def _interrupted() -> typer.Exit:
    err.print("interrupted", highlight=False)
    return typer.Exit(130)


def _session(url: str, policy: Path | None, nonce: Literal["auto", "none"] = "auto") -> Session:
    store = TrustStore.default()
    return Session(
        url,
        trust=store.anchors(),
        policy=load_policy(policy or store.policy_path, required=policy is not None),
        checkpoints=store.checkpoints(),
        nonce_mode=nonce,
    )


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@app.command()
def verify(
    url: str | None = typer.Argument(None, help="gateway URL [env OPENPCC_URL]"),
    nonce: str = typer.Option("auto", "--nonce", help="auto: fresh 32-byte nonce; none: no nonce"),
    policy: Path | None = PolicyOpt,
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Fetch the node's attestation bundle and run every check, in order."""
    if nonce not in ("auto", "none"):
        raise _fail(OpenPCCError("--nonce must be 'auto' or 'none'"), json_out)
    target = _url(url)

    async def go() -> None:
        async with _session(target, policy, nonce) as s:  # type: ignore[arg-type]
            run = await s.verify()
        if json_out:
            obj = {"url": target, **run.to_dict(), "verify_ms": round(s.verify_seconds * 1000, 2)}
            if run.error is not None:
                obj.update(
                    kind=type(run.error).__name__,
                    check=_failed_check(run),
                    hint=_hint(run.error),
                )
            print(json.dumps(obj))
        else:
            print_run(out, run, target)
        if run.error is not None:
            raise typer.Exit(exit_code_for(run.error))

    try:
        _run(go())
    except OpenPCCError as e:
        raise _fail(e, json_out) from e
    except KeyboardInterrupt:
        raise _interrupted() from None


@app.command()
def ask(
    prompt: str | None = typer.Argument(
        None, help="the prompt; read from stdin when absent or '-'"
    ),
    url: str | None = UrlOpt,
    model: str | None = typer.Option(None, "--model", help="model name (the node serves one)"),
    max_tokens: int = typer.Option(128, "--max-tokens", min=1, max=32768),
    raw: bool = typer.Option(False, "--raw", help="plain completion instead of chat"),
    policy: Path | None = PolicyOpt,
    json_out: bool = typer.Option(False, "--json", help="one JSON object with the answer"),
) -> None:
    """Verify the node, then send one encrypted prompt and stream the answer."""
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise _fail(
            OpenPCCError("the prompt is empty", hint="pass it as an argument or on stdin"), json_out
        )
    target = _url(url)
    payload: dict[str, object] = {"max_tokens": max_tokens, "stream": True}
    if model:
        payload["model"] = model
    if raw:
        path = "/v1/completions"
        payload["prompt"] = prompt
    else:
        path = "/v1/chat/completions"
        payload["messages"] = [{"role": "user", "content": prompt}]

    session: Session | None = None
    text: list[str] = []

    async def go() -> None:
        nonlocal session
        async with _session(target, policy) as s:
            session = s
            node = await s.node()
            if not json_out:
                err.print(status_line(s.last_run, target), soft_wrap=True)
            async for piece in s.stream_text(path, payload):
                text.append(piece)
                if not json_out:
                    out.print(piece, end="", highlight=False, markup=False)
            if json_out:
                print(
                    json.dumps(
                        {
                            "ok": True,
                            "text": "".join(text),
                            "tee": node.tee,
                            "simulated": node.simulated,
                            "measurement": node.measurement.hex(),
                            "key_id": node.key_config.key_id,
                            "verified": True,
                            "verify_ms": round(s.verify_seconds * 1000, 2),
                        }
                    )
                )
            else:
                out.print()
                if node.simulated:
                    err.print(f"[bold red]{SIMULATED_BANNER}[/]")

    try:
        _run(go())
    except OpenPCCError as e:
        if not json_out and any(text):
            out.print()  # the error starts on its own line, after what was already shown
        raise _fail(e, json_out, session.last_run if session is not None else None) from e
    except KeyboardInterrupt:
        raise _interrupted() from None


@app.command()
def chat(
    url: str | None = UrlOpt,
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, max=32768),
    save: Path | None = typer.Option(None, "--save", help="write the transcript here on exit"),
    policy: Path | None = PolicyOpt,
) -> None:
    """Interactive chat: streamed answers, /verify, /reset, /quit; Ctrl-C stops an answer."""
    from client_cli.chat import ChatLoop

    target = _url(url)
    session: Session | None = None
    try:
        session = _session(target, policy)
        code = ChatLoop(session, target, max_tokens=max_tokens, save=save).run()
    except OpenPCCError as e:
        raise _fail(e, run=session.last_run if session is not None else None) from e
    except KeyboardInterrupt:
        raise _interrupted() from None
    raise typer.Exit(code)


@app.command()
def proxy(
    url: str | None = UrlOpt,
    listen: str = typer.Option("127.0.0.1:8481", "--listen", help="HOST:PORT to serve on"),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="allow a non-loopback listen address"
    ),
    policy: Path | None = PolicyOpt,
) -> None:
    """A local OpenAI-compatible endpoint that verifies the node and encrypts every request."""
    from client_cli.proxy import run_proxy

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise _fail(OpenPCCError(f"--listen {listen!r} is not HOST:PORT"))
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]") and not allow_remote:
        raise _fail(
            OpenPCCError(
                f"refusing to listen on {host}: the proxy serves plaintext",
                hint="use a loopback address, or --allow-remote if you mean it",
            )
        )
    target = _url(url)
    try:
        run_proxy(
            _session(target, policy), host.strip("[]"), int(port), target, allow_remote=allow_remote
        )
    except OpenPCCError as e:
        raise _fail(e) from e


@app.command()
def relay(
    gateway: str = typer.Option(..., "--gateway", help="the gateway's URL"),
    listen: str = typer.Option("127.0.0.1:8482", "--listen", help="HOST:PORT to serve on"),
) -> None:
    """An OHTTP relay: forwards encrypted requests, strips client-identifying headers."""
    from client_cli.relay import run_relay

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise _fail(OpenPCCError(f"--listen {listen!r} is not HOST:PORT"))
    try:
        run_relay(gateway, host.strip("[]"), int(port))
    except OpenPCCError as e:
        raise _fail(e) from e


@app.command()
def trust(
    simulated: list[Path] | None = typer.Option(
        None,
        "--simulated",
        help="trust the SIMULATION root(s) in this PEM (development only); repeatable, and "
        "together they replace what was trusted before. A root named CN=Intel SGX Root CA "
        "anchors simulated TDX quotes (sim-tdx) only; any other root anchors simulated SEV-SNP "
        "reports and simulated GPU evidence",
    ),
    untrust_simulated: bool = typer.Option(
        False, "--untrust-simulated", help="stop trusting simulation roots"
    ),
    log_key: str | None = typer.Option(
        None, "--log-key", help="pin a transparency-log verifier key"
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Show or change what this client trusts (pinned vendor roots come from the package)."""
    store = TrustStore.default()
    try:
        if simulated:
            certs = store.trust_simulation(b"\n".join(p.read_bytes() for p in simulated))
            err.print(
                f"[bold red]Now trusting {len(certs)} SIMULATION root(s).[/] Evidence "
                "signed by them proves nothing about hardware: a node that shows it is "
                f"{SIMULATED_BANNER}. Undo with `openpcc trust --untrust-simulated`."
            )
        if untrust_simulated and store.untrust_simulation():
            err.print("Simulation roots removed.")
        if log_key is not None:
            pinned = store.add_log_key(log_key)
            err.print(f"Pinned transparency-log key {pinned.name}.")
        anchors = store.anchors()
        # Loading the policy verifies the reference values it names: a bad one shows here.
        policy, files = load_policy_file(store.policy_path)
    except OSError as e:
        raise _fail(OpenPCCError(f"trust store: {e}"), json_out) from e
    except OpenPCCError as e:
        raise _fail(e, json_out) from e
    info = {
        "directory": str(store.directory),
        "amd_roots": len(anchors.amd_roots),
        "intel_roots": len(anchors.intel_roots),
        "nvidia_roots": len(anchors.nvidia_roots),
        "log_keys": [k.encode() for k in anchors.log_keys],
        "simulation_roots": [
            c.subject.rfc4514_string()
            for c in (*anchors.simulation_snp_roots, *anchors.simulation_tdx_roots)
        ],
        "policy": str(store.policy_path) if store.policy_path.exists() else None,
    }
    refs = reference_summary(policy, files)
    if json_out:
        print(json.dumps({**info, "reference_values": refs}))
        return
    for k, v in info.items():
        out.print(f"{k}: {v}", highlight=False)
    out.print(f"tdx_collateral: {files.tdx_collateral}", highlight=False)
    for rim in policy.gpu_rims:
        out.print(
            f"gpu_rim: {rim.rim.label} version {rim.rim.version}, signed by "
            f"{rim.signer.subject.rfc4514_string()}",
            highlight=False,
        )


@app.command()
def dashboard(url: str | None = typer.Argument(None, help="gateway URL [env OPENPCC_URL]")) -> None:
    """Live dashboard: verifies the node itself; attestation, measurements, GPUs, throughput."""
    from tui.app import run_dashboard

    run_dashboard(_url(url))
