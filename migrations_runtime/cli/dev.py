"""`svcmig dev`: migrate the local database, then serve every service's handler on 127.0.0.1
(the server itself is `migrations_runtime.dev.server`)."""

from __future__ import annotations

import os
import sys
from http.server import ThreadingHTTPServer

import click

from ..dev.embedded import resolve_database
from ..dev.server import HOST, curl_examples, load_services, serve
from ..engine.apply import migrate
from ..engine.discover import find_project_root
from ..engine.errors import SvcmigError
from ..engine.report import status_text
from .common import exit_code, fail
from .output import event_log, log_format_option


@click.command("dev")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
              help="Port on 127.0.0.1.")
@click.option("--database-url", default=None,
              help="Postgres URL; default: $DATABASE_URL, else the project's embedded Postgres "
                   "under .svcmig/ (started on demand and reused)")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Handler instances per service, each serving one request at a time with "
                   "its own pool, as Lambda scales out.")
@log_format_option
def dev(port: int, database_url: str | None, concurrency: int, log_format: str) -> None:
    """Migrate the local database and serve every service's handler on 127.0.0.1."""
    try:
        root = find_project_root()
        database = resolve_database(database_url, root)
        url = database.url
        click.echo(f"database: {database.description()}", err=True)
        result = migrate(url, root, "all", log=event_log(log_format))
    except SvcmigError as err:
        fail(str(err), exit_code(err))
    click.echo(f"applied {len(result.results)} revision(s)\n{status_text(result.plan)}",
               err=True)
    os.environ["DATABASE_URL"] = url  # the handlers log in as <service>_app on this server
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("SVCMIG_LOCAL", "1")
    services = load_services(root, concurrency)

    def ready(server: ThreadingHTTPServer) -> None:
        names = ", ".join(s.name for s in services)
        click.echo(f"serving {names} on http://{HOST}:{server.server_port} (Ctrl-C stops)\n"
                   f"try:\n{curl_examples(server.server_port)}", err=False)

    try:
        serve(services, port, ready)
    except OSError as err:
        click.echo(f"error: cannot listen on {HOST}:{port}: {err.strerror}; pick another "
                   "--port", err=True)
        sys.exit(1)
    click.echo("stopped", err=True)
