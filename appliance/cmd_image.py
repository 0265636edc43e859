"""``openpcc-appliance build-image``: build the sealed image an image recipe describes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from appliance.progress import ProgressUI
from attest.errors import OpenPCCError
from cvm_boot.image.build import OUTPUTS
from cvm_boot.image.build import build_image as _build
from cvm_boot.image.spec import load_image_recipe

__all__ = ["build_image"]


def build_image(
    recipe: Path = typer.Argument(
        ..., help="image recipe (openpcc-image/1), e.g. cvm_boot/image/recipes/cpu.toml"
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="copy the image here (it is always kept in the cache)"
    ),
    cache: Path | None = typer.Option(
        None, "--cache", help="cache directory (default ~/.cache/openpcc)"
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="build even when the cache has it"),
    json_out: bool = typer.Option(False, "--json", help="print only a JSON result on stdout"),
) -> None:
    """Build kernel, initramfs and dm-verity root from Debian packages; print the root hash.

    Fetches the weights the recipe's [weights] source names first (a directory,
    hf:ORG/NAME@REVISION, or an https:// archive pinned by weights.sha256). Progress bars on a
    terminal, one line per step otherwise, nothing but the JSON result with --json.
    """
    console = Console(stderr=True)
    try:
        with ProgressUI(console, json_mode=json_out) as ui:
            result = _build(
                load_image_recipe(recipe),
                cache=cache,
                rebuild=rebuild,
                progress=ui.say,
                meter=ui.meter,
            )
    except (OpenPCCError, OSError) as e:
        if json_out:
            print(json.dumps({"error": str(e), "hint": getattr(e, "hint", "")}))
        else:
            console.print(f"[red]build-image failed:[/red] {escape(str(e))}", highlight=False)
            if isinstance(e, OpenPCCError) and e.hint:
                console.print(f"[dim]hint: {escape(e.hint)}[/]", highlight=False)
        raise typer.Exit(1) from e
    where = result.directory
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        for name in (*OUTPUTS, "build.json"):
            shutil.copyfile(result.directory / name, output / name)
        where = output
    if json_out:
        print(
            json.dumps(
                {
                    "image": str(where),
                    "cached": result.cached,
                    "seconds": round(result.seconds, 1),
                    "key": result.key,
                    "root_hash": result.root_hash.hex(),
                    "weights_root_hash": result.weights_root_hash.hex(),
                    "manifest": str(where / "manifest.json"),
                }
            )
        )
        return
    state = "from the cache" if result.cached else f"built in {result.seconds:.0f}s"
    console.print(f"image {where} ({state}, key {result.key})")
    typer.echo(f"root_hash {result.root_hash.hex()}")
    typer.echo(f"weights_root_hash {result.weights_root_hash.hex()}")
    typer.echo(f"manifest {where / 'manifest.json'}")
