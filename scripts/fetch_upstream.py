"""Fetch the pinned upstream pgflow SQL (npm ``@pgflow/core``) into the package-data folder.

Standard library only: it runs before the package is installed (``make setup``) and from the
wheel/sdist build hook. Nothing it writes is committed; ``pgflow/schema/pins.json`` is the pin.

    python scripts/fetch_upstream.py          # fetch if missing or wrong, else do nothing
    python scripts/fetch_upstream.py --check  # exit 1 unless the files are present and match
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINS = ROOT / "pgflow" / "schema" / "pins.json"
TARGET = ROOT / "pgflow" / "schema" / "upstream"


class FetchError(Exception):
    pass


def _pins() -> dict[str, object]:
    core: dict[str, object] = json.loads(PINS.read_text())["pgflow_core"]
    return core


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_ok(target: Path = TARGET) -> bool:
    """True when every pinned migration is present with its pinned hash (and nothing else)."""
    expected: dict[str, str] = _pins()["migrations"]  # type: ignore[assignment]
    if not target.is_dir():
        return False
    present = {p.name for p in target.glob("*.sql")}
    if present != set(expected):
        return False
    return all(_sha256((target / name).read_bytes()) == digest for name, digest in expected.items())


def _npm_pack(spec: str, workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(
            "npm is required to fetch the upstream pgflow SQL (install Node.js 18+ with npm)."
        )
    proc = subprocess.run(
        [npm, "pack", spec, "--silent", "--pack-destination", str(workdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise FetchError(f"`npm pack {spec}` failed:\n{proc.stderr.strip()}")
    tarballs = list(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise FetchError(f"`npm pack {spec}` produced {len(tarballs)} tarballs, expected 1")
    return tarballs[0]


def fetch(target: Path = TARGET) -> None:
    pins = _pins()
    spec = f"{pins['package']}@{pins['version']}"
    expected: dict[str, str] = pins["migrations"]  # type: ignore[assignment]
    prefix = f"{pins['migrations_path']}/"
    with tempfile.TemporaryDirectory() as tmp:
        tarball = _npm_pack(spec, Path(tmp))
        blob = tarball.read_bytes()
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(blob).digest()).decode()
        if integrity != pins["integrity"]:
            raise FetchError(
                f"{spec}: integrity {integrity} does not match the pin {pins['integrity']}"
            )
        staged = Path(tmp) / "staged"
        staged.mkdir()
        with tarfile.open(tarball) as archive:
            for member in archive.getmembers():
                if not (member.isfile() and member.name.startswith(prefix)):
                    continue
                name = member.name[len(prefix) :]
                if name not in expected:
                    continue
                extracted = archive.extractfile(member)
                if extracted is None:
                    raise FetchError(f"{spec}: cannot read {member.name}")
                data = extracted.read()
                if _sha256(data) != expected[name]:
                    raise FetchError(f"{spec}: {name} does not match its pinned sha256")
                (staged / name).write_bytes(data)
        missing = sorted(set(expected) - {p.name for p in staged.iterdir()})
        if missing:
            raise FetchError(f"{spec}: missing migrations {missing}")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify, never fetch")
    args = parser.parse_args(argv)
    if files_ok():
        print(f"upstream pgflow SQL present and verified in {TARGET.relative_to(ROOT)}")
        return 0
    if args.check:
        print("upstream pgflow SQL missing or modified; run `make setup`", file=sys.stderr)
        return 1
    try:
        fetch()
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pins = _pins()
    print(
        f"fetched {pins['package']}@{pins['version']} (integrity verified): "
        f"{len(pins['migrations'])} migrations into {TARGET.relative_to(ROOT)}"  # type: ignore[arg-type]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
