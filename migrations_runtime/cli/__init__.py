"""The command line, `svcmig`: click commands that only adapt arguments and output to the engine,
the guard, the tools and the dev server. `main.py` holds the group; each other module a family
of commands, imported only when one of its commands runs."""
