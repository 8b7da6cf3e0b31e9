"""A private PostgreSQL cluster for benchmarks: `initdb` from the machine's own server
(`pg_config --bindir`) into a temporary folder, started on a free port, stopped and deleted
afterwards. Nothing else runs on it, so one benchmark's figures are not another process's
noise, and roles it creates never meet a developer's own (roles are cluster-wide).

`durable=False` (what `bench_migrate.py --private-server` uses) puts the data in memory
(/dev/shm when it exists) with `fsync`, `synchronous_commit` and `full_page_writes` off: it
measures what a runner itself costs (its statements, round trips and Python), not the disk's
flush latency, which on a shared virtual machine varies more than the runners differ.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOT_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def bindir() -> Path:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit("a private server needs PostgreSQL's own binaries (pg_config --bindir); "
                         "install the postgresql package or pass --database-url") from err
    return Path(out)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_postgres(settings: dict[str, str] | None = None,
                     durable: bool = True) -> Iterator[str]:
    """Yield a superuser URL (user postgres, trust auth, 127.0.0.1) to a fresh cluster."""
    binaries = bindir()
    memory = Path("/dev/shm")
    base = memory if not durable and memory.is_dir() else None
    folder = Path(tempfile.mkdtemp(prefix="svcmig-bench-pg-", dir=base))
    folder.chmod(0o777)
    data = folder / "data"
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    port = _free_port()
    options = {"listen_addresses": "127.0.0.1", "port": str(port),
               "unix_socket_directories": str(folder), "max_connections": "300",
               **({} if durable else NOT_DURABLE), **(settings or {})}
    log = folder / "server.log"
    try:
        subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
                        "-A", "trust", "-E", "UTF8", "--no-instructions"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        flags = " ".join(f"-c {key}={value}" for key, value in options.items())
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log),
                        "-o", flags, "-w", "start"], check=True, stdout=subprocess.DEVNULL)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(folder, ignore_errors=True)
