"""``openpcc-appliance measure`` and ``release``: from a recipe to a logged release manifest.

``measure RECIPE`` prints the expected launch measurement and writes the release manifest;
running it twice on the same recipe gives the same digest and byte-identical manifest.
``release RECIPE --log-dir DIR`` also appends the manifest's canonical JSON to the transparency
log (once: a manifest already logged keeps its index) and prints index, leaf hash and checkpoint.
The lead registers both functions on the ``openpcc-appliance`` typer app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from attest.errors import OpenPCCError, exit_code_for
from attest.tlog import leaf_hash
from cvm_boot.manifest import build_manifest, canonical_json
from cvm_boot.measure import expected_measurement
from cvm_boot.recipe import Recipe, load_recipe
from cvm_boot.tlog import TransparencyLog

__all__ = ["default_manifest_path", "measure", "release"]

_err = Console(stderr=True)


def default_manifest_path(recipe_path: Path) -> Path:
    """``NAME.toml`` -> ``NAME.manifest.json`` beside it."""
    return recipe_path.with_name(recipe_path.stem + ".manifest.json")


def _fail(error: OpenPCCError) -> typer.Exit:
    line = f"[bold red]error:[/] {error}"
    if error.hint:
        line += f"\n[dim]hint: {error.hint}[/]"
    _err.print(line, highlight=False)
    return typer.Exit(exit_code_for(error))


def _measure(recipe_path: Path) -> tuple[Recipe, dict[str, object], bytes]:
    recipe = load_recipe(recipe_path)
    measurement = expected_measurement(recipe)
    manifest = build_manifest(recipe, measurement)
    return recipe, manifest, measurement


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
    path.write_bytes(canonical_json(manifest) + b"\n")
    if json_:
        out = {"measurement": measurement.hex(), "tee": parsed.tee, "manifest_path": str(path)}
        typer.echo(json.dumps(out, sort_keys=True))
    else:
        typer.echo(f"tee:         {parsed.tee}")
        typer.echo(f"measurement: {measurement.hex()}")
        typer.echo(f"manifest:    {path}")


def release(
    recipe: Annotated[Path, typer.Argument(help="Release recipe (TOML).")],
    log_dir: Annotated[
        Path, typer.Option("--log-dir", help="Transparency log directory (created if absent).")
    ],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Measure RECIPE and append its manifest to the transparency log."""
    try:
        _, manifest, measurement = _measure(recipe)
        data = canonical_json(manifest)
        log = TransparencyLog.open(log_dir)
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
        typer.echo(json.dumps(out, sort_keys=True))
    else:
        typer.echo(f"index:       {index}{'' if appended else ' (already logged)'}")
        typer.echo(f"leaf hash:   {leaf}")
        typer.echo(f"measurement: {measurement.hex()}")
        typer.echo(f"log key:     {log.verifier_key}")
        typer.echo("checkpoint:")
        typer.echo(checkpoint, nl=False)
