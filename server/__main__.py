import typer

from server.app import main

typer.run(main)
