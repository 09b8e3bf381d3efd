"""The SDKs are publishable as they are: `npm pack` makes tarballs with both builds and their
declarations (and installs and loads from the tarball alone), and sdk/python builds a wheel
that imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from tests.sdk.conftest import SDK, npm


def pack(package: Path, into: Path) -> Path:
    out = subprocess.run(
        [npm(), "pack", "--json", "--pack-destination", str(into)],
        cwd=package,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    name = json.loads(out[out.index("[") :])[0]["filename"]
    return into / name


def test_npm_pack_of_the_sdk_installs_and_loads_both_ways(js_sdk: Path, tmp_path: Path) -> None:
    tarball = pack(js_sdk, tmp_path)
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for needed in (
        "package/package.json",
        "package/dist/esm/index.js",
        "package/dist/esm/index.d.ts",
        "package/dist/cjs/index.js",
        "package/dist/cjs/index.d.ts",
        "package/dist/cjs/package.json",
        "package/src/index.ts",
    ):
        assert needed in names, sorted(names)
    assert not [n for n in names if "node_modules" in n or n.startswith("package/test/")]

    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true}')
    subprocess.run(
        [npm(), "install", "--no-audit", "--no-fund", "--offline", str(tarball)],
        cwd=app,
        check=True,
        capture_output=True,
        timeout=300,
    )
    check = (
        "const cjs = require('@penguinmails/sdk');"
        "import('@penguinmails/sdk').then((esm) => console.log("
        "typeof cjs.PenguinMails, typeof esm.PenguinMails, typeof esm.verifyWebhookSignature,"
        "new esm.RateLimitError('m', {code: 'RATE_LIMITED', status: 429, retryAfter: 1000})"
        " instanceof esm.PenguinMailsError))"
    )
    out = subprocess.run(
        ["node", "-e", check], cwd=app, check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert out.split() == ["function", "function", "function", "true"]


def test_npm_pack_of_the_react_package(react_sdk: Path, tmp_path: Path) -> None:
    with tarfile.open(pack(react_sdk, tmp_path)) as tar:
        names = set(tar.getnames())
    assert {"package/dist/esm/index.js", "package/dist/esm/index.d.ts"} <= names
    assert "package/dist/cjs/index.js" in names
    manifest = json.loads((react_sdk / "package.json").read_text())
    assert set(manifest["peerDependencies"]) == {"react", "@penguinmails/sdk"}
    assert "dependencies" not in manifest  # React and the SDK come from the app


def test_python_wheel_builds_and_imports(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(SDK / "python", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    # In an isolated build environment, as any publisher builds it (pip fetches setuptools
    # from PyPI for it, like npm ci fetches the JavaScript tooling).
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        check=True,
        timeout=300,
    )
    [wheel] = dist.glob("penguinmails_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith("METADATA"))
    assert {"penguinmails_client/__init__.py", "penguinmails_client/_generated.py"} <= names
    assert "penguinmails_client/py.typed" in names
    assert "Requires-Dist: aiohttp>=3.10" in metadata
    # Imported from the wheel alone (a wheel of pure Python is importable as a zip).
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import penguinmails_client as p; print(p.__file__, p.PenguinMails)",
        ],
        env={"PYTHONPATH": str(wheel)},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert str(wheel) in out
