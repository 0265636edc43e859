"""``openpcc-appliance measure`` and ``release``: from a recipe to a logged release manifest.

``measure RECIPE`` prints the expected launch measurement and writes the release manifest;
running it twice on the same recipe gives the same digest and byte-identical manifest.
``release RECIPE [--log-dir DIR]`` also appends the manifest's canonical JSON to the transparency
log (once: a manifest already logged keeps its index) and prints index, leaf hash and checkpoint.
``tdx-reference`` turns the quote of a reference boot into the ``[tdx]`` table a TDX recipe
pins (:mod:`cvm_boot.tdx_reference`); both commands warn while a TDX recipe leaves RTMR0-2
unpinned, because clients refuse such a release.
The lead registers both functions on the ``openpcc-appliance`` typer app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from appliance.state import StatePaths
from attest.errors import OpenPCCError, ParseError, exit_code_for
from attest.pemfile import read_pem_certificates
from attest.tlog import leaf_hash
from cvm_boot.manifest import build_manifest, canonical_json
from cvm_boot.measure import TDX_REFERENCE_HINT, expected_measurement, tdx_expectations
from cvm_boot.recipe import Recipe, load_recipe
from cvm_boot.tdx_reference import fetch_quote, quote_from, reference_values
from cvm_boot.tlog import ENTRIES_FILE, TransparencyLog

__all__ = ["default_manifest_path", "measure", "release", "tdx_reference"]

_err = Console(stderr=True)


def default_manifest_path(recipe_path: Path) -> Path:
    """``NAME.toml`` -> ``NAME.manifest.json`` beside it."""
    return recipe_path.with_name(recipe_path.stem + ".manifest.json")


def _fail(error: OpenPCCError) -> typer.Exit:
    # The text is data (paths, recipe keys like "[tdx]"), never markup.
    line = f"[bold red]error:[/] {escape(str(error))}"
    if error.hint:
        line += f"\n[dim]hint: {escape(error.hint)}[/]"
    _err.print(line, highlight=False, soft_wrap=True)
    return typer.Exit(exit_code_for(error))


def _os_error(e: OSError, what: str) -> OpenPCCError:
    return OpenPCCError(f"cannot {what}: {e.strerror or e}", hint=f"check {e.filename or what}")


def _measure(recipe_path: Path) -> tuple[Recipe, dict[str, object], bytes]:
    recipe = load_recipe(recipe_path)
    measurement = expected_measurement(recipe)
    manifest = build_manifest(recipe, measurement)
    return recipe, manifest, measurement


def _warn_unbound(recipe: Recipe, json_out: bool) -> list[str]:
    """A TDX recipe's RTMR0-2 it leaves unpinned (clients refuse it); warned about on stderr."""
    if recipe.tee != "tdx":
        return []
    unbound = list(tdx_expectations(recipe).unbound)
    if unbound and not json_out:
        _err.print(
            f"[bold yellow]warning:[/] {', '.join(n.upper() for n in unbound)} not pinned in "
            "[tdx]: clients refuse this release until they are\n"
            f"[dim]hint: {TDX_REFERENCE_HINT}[/]",
            highlight=False,
            soft_wrap=True,
        )
    return unbound


def measure(
    recipe: Annotated[Path, typer.Argument(help="Release recipe (TOML).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the manifest [RECIPE.manifest.json]."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Print the expected launch measurement of RECIPE and write its release manifest."""
    try:
        parsed, manifest, measurement = _measure(recipe)
    except OpenPCCError as e:
        raise _fail(e) from e
    path = output or default_manifest_path(recipe)
    try:
        path.write_bytes(canonical_json(manifest) + b"\n")
    except OSError as e:
        raise _fail(_os_error(e, f"write the manifest to {path}")) from e
    unbound = _warn_unbound(parsed, json_)
    if json_:
        out: dict[str, object] = {
            "measurement": measurement.hex(),
            "tee": parsed.tee,
            "manifest_path": str(path),
        }
        if parsed.tee == "tdx":
            out["unpinned_rtmrs"] = unbound
        typer.echo(json.dumps(out, sort_keys=True))
    else:
        typer.echo(f"tee:         {parsed.tee}")
        typer.echo(f"measurement: {measurement.hex()}")
        typer.echo(f"manifest:    {path}")


def release(
    recipe: Annotated[Path, typer.Argument(help="Release recipe (TOML).")],
    log_dir: Annotated[
        Path | None,
        typer.Option("--log-dir", help="Transparency log directory [the appliance's: STATE/log]."),
    ] = None,
    new_log: Annotated[
        bool,
        typer.Option(
            "--new-log",
            help="Start a new log (and signing key) in --log-dir when it holds none; without it "
            "a directory with no log is an error, so a mistyped path never starts one.",
        ),
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Measure RECIPE and append its manifest to the transparency log."""
    directory = log_dir if log_dir is not None else StatePaths.default().log
    try:
        parsed, manifest, measurement = _measure(recipe)
        unbound = _warn_unbound(parsed, json_)
        data = canonical_json(manifest)
        if not (directory / ENTRIES_FILE).exists() and not new_log:
            raise OpenPCCError(
                f"no transparency log in {directory}",
                hint="name the log with --log-dir (the appliance's is STATE/log, made by "
                "provision or ./install.sh), or pass --new-log to start one: a new signing key "
                "that clients must pin",
            )
        try:
            log = TransparencyLog.open(directory)
        except OSError as e:
            raise _os_error(e, f"open the log in {directory}") from e
        index = log.find(data)
        appended = index is None
        if index is None:
            index = log.append(data)
        checkpoint = log.checkpoint()
    except OpenPCCError as e:
        raise _fail(e) from e
    leaf = leaf_hash(data).hex()
    if json_:
        out = {
            "index": index,
            "appended": appended,
            "leaf_hash": leaf,
            "measurement": measurement.hex(),
            "tree_size": log.size,
            "checkpoint": checkpoint,
            "log_vkey": log.verifier_key,
        }
        if parsed.tee == "tdx":
            out["unpinned_rtmrs"] = unbound
        typer.echo(json.dumps(out, sort_keys=True))
    else:
        typer.echo(f"index:       {index}{'' if appended else ' (already logged)'}")
        typer.echo(f"leaf hash:   {leaf}")
        typer.echo(f"measurement: {measurement.hex()}")
        typer.echo(f"log key:     {log.verifier_key}")
        typer.echo("checkpoint:")
        typer.echo(checkpoint, nl=False)


def tdx_reference(
    source: Annotated[
        Path | None,
        typer.Argument(help="A DCAP quote, or an attestation bundle (JSON) holding one."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Fetch the quote from this gateway's /v1/attestation."),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", help="Check the quote against this TDX recipe's [tdx].mrtd."),
    ] = None,
    simulated_root: Annotated[
        Path | None,
        typer.Option(
            "--simulated-root",
            help="A simulated appliance's sim-tdx root (PEM): accept a SIMULATED quote chained "
            "to it instead of Intel's.",
        ),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of TOML.")] = False,
) -> None:
    """Print the [tdx] table (MRTD, RTMR0-2) a TDX recipe pins, from a reference boot's quote.

    The quote must verify to Intel's root and come from a TD with debug off; boot the reference
    on a host you trust, since RTMR0 records the firmware configuration that host supplied.
    """
    try:
        if (source is None) == (url is None):
            raise ParseError(
                "give exactly one of SOURCE (a quote or bundle file) and --url",
                hint="openpcc-appliance tdx-reference --url http://127.0.0.1:8443",
            )
        parsed = load_recipe(recipe) if recipe is not None else None
        roots = (
            read_pem_certificates(simulated_root, "--simulated-root")
            if simulated_root is not None
            else None
        )
        if source is not None:
            try:
                raw = source.read_bytes()
            except OSError as e:
                raise ParseError(f"cannot read {source}: {e.strerror or e}") from e
            quote = quote_from(raw)
        else:
            assert url is not None
            quote = fetch_quote(url)
        ref = reference_values(quote, simulation_roots=roots, recipe=parsed)
    except OpenPCCError as e:
        raise _fail(e) from e
    if json_:
        typer.echo(json.dumps(ref.to_dict(), sort_keys=True))
    else:
        typer.echo(ref.toml(), nl=False)
