"""Local development: the project's embedded Postgres (`embedded`) and the HTTP server that serves
every service's Lambda handler (`server`) for `svcmig dev`."""
