"""`python -m migrations_runtime.guard` runs `svcmig lint` on its own."""

from .cli import lint

lint(prog_name="svcmig lint")
