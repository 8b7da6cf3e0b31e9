"""Fuzz every route of the local API with schemathesis: no 5xx, and every documented response
conforms to its schema.

    .venv/bin/python tools/schemathesis_run.py --database-url postgresql://…/<fresh database>

Starts `svcmig dev` on a free port against the given database (migrated by the dev server
itself; give it a fresh, throwaway database: the run writes users and orders), fetches the
merged OpenAPI document from its `/openapi.json`, runs `schemathesis run` against it with the
checks `not_a_server_error` and `response_schema_conformance` in positive and negative mode,
a bounded number of examples per operation, and stops the dev server at the end whatever
happened. The exit status is schemathesis' own (non-zero on any failure), or 2 when the dev
server does not come up. Arguments after `--` go to `schemathesis run` as they are (e.g.
`-- --seed 1` to replay a run, or `-- --max-examples 200` for a longer one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
CHECKS = "not_a_server_error,response_schema_conformance"
# POST /uploads answers 503 without a bucket; with one and dummy keys it presigns offline (no
# AWS call), so the route is fuzzed for real.
UPLOADS = {"UPLOAD_BUCKET": "svcmig-fuzz", "AWS_ACCESS_KEY_ID": "fuzz", "AWS_SECRET_ACCESS_KEY":
           "fuzz", "AWS_SESSION_TOKEN": "", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
SERVING = re.compile(r"^serving .* on (http://127\.0\.0\.1:\d+)", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_dev_server(database_url: str, logs: Path,
                     timeout: float) -> tuple[subprocess.Popen[bytes], str]:
    """`svcmig dev` on a free port, and its base URL once it prints `serving … on
    http://127.0.0.1:<port>`. Another process may take the port between the probe and the
    bind: then it is tried again on another one."""
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(ROOT), **UPLOADS}
    env.pop("DATABASE_URL", None)
    for _ in range(3):
        with (logs / "dev.stdout").open("wb") as out, (logs / "dev.stderr").open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "migrations_runtime.cli", "dev", "--port",
                 str(free_port()), "--database-url", database_url],
                cwd=ROOT, env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = SERVING.search((logs / "dev.stdout").read_text(errors="replace"))
            if found:
                return process, found.group(1)
            if process.poll() is not None:
                break
            time.sleep(0.2)
        stop(process)
        if "cannot listen" not in (logs / "dev.stderr").read_text(errors="replace"):
            break
    raise RuntimeError(f"svcmig dev did not start (exit {process.returncode}):\n"
                       + tail(logs / "dev.stderr"))


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a user stops it (the pools close), then a kill if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True,
                        help="a fresh, throwaway database: the dev server migrates it and the "
                             "run writes to it")
    parser.add_argument("--max-examples", type=int, default=50,
                        help="test cases per operation in the fuzzing phase (default 50)")
    # one worker: with several, hypothesis parses lambdas' source in parallel threads, which
    # trips a CPython 3.11 race (SystemError "AST constructor recursion depth mismatch")
    parser.add_argument("--workers", default="1", help="schemathesis workers (default 1)")
    parser.add_argument("--start-timeout", type=float, default=120.0,
                        help="seconds to wait for svcmig dev to serve (default 120)")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # run the `finally` below: the server is stopped

    signal.signal(signal.SIGTERM, terminate)
    logs = Path(tempfile.mkdtemp(prefix="svcmig-schemathesis-"))
    process: subprocess.Popen[bytes] | None = None
    status = 2
    try:
        try:
            process, base = start_dev_server(args.database_url, logs, args.start_timeout)
        except RuntimeError as err:
            print(f"error: {err}\n(logs kept in {logs})", file=sys.stderr)
            return 2
        with urllib.request.urlopen(f"{base}/openapi.json", timeout=30) as response:
            document = json.load(response)
        (logs / "openapi.json").write_text(json.dumps(document))
        operations = sum(1 for item in document["paths"].values() for method in item
                         if method in ("get", "put", "post", "delete", "patch"))
        print(f"svcmig dev serves {base}; {operations} operations in {base}/openapi.json",
              flush=True)
        command = [
            str(Path(sys.executable).parent / "schemathesis"), "run",
            str(logs / "openapi.json"), "--url", base,
            "--checks", CHECKS, "--mode", "all", "--max-examples", str(args.max_examples),
            "--workers", args.workers, "--generation-database", "none",
            "--request-timeout", "30", "--no-color", *extra,
        ]
        print("$ " + " ".join(command), flush=True)
        hooks = {"SCHEMATHESIS_HOOKS": str(ROOT / "tools" / "schemathesis_hooks.py")}
        status = subprocess.run(command, cwd=logs, env={**os.environ, **hooks}).returncode
        if process.poll() is not None:
            print(f"error: svcmig dev exited during the run ({process.returncode})",
                  file=sys.stderr)
            status = status or 1
        return status
    finally:
        if process is not None:
            stop(process)
            if status:  # requests on stderr; handler tracebacks (JSON log lines) on stdout
                print(f"svcmig dev's last requests ({logs}/dev.stderr):\n"
                      f"{tail(logs / 'dev.stderr', 15)}\nand its log ({logs}/dev.stdout):\n"
                      f"{tail(logs / 'dev.stdout', 5)}", file=sys.stderr)
        if status == 0:
            shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
