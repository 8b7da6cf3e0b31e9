"""`python -m migrations_runtime.cli` is the `svcmig` console script."""

from .main import main

main()
