"""What each image's Python packages weigh, measured without a Docker engine.

    .venv/bin/python bench/image_sizes.py [--python python3.11] [--top 5]

Each image's requirements are installed the way its Dockerfile installs them (exact pins, --no-deps,
bytecode compiled as pip does) into a fresh venv, and its site-packages measured with `du -sb`:
graph-engine installs docker/graph-engine.requirements.lock, the connector requirements.lock. Also
printed: the sources each image copies, and the largest entries of each site-packages. Both images
start FROM python:3.11.11-slim-bookworm, which is not measured here (no Docker engine); the connector
image also downloads the pulumi CLI and the pulumi-kubernetes plugin at build time (not measured).

uv (`make setup` installs it into .venv) installs from its cache by hard link, so the full lock takes
seconds and little disk once the cache is warm; the venvs are removed afterwards.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# image -> (requirements it installs, the project folders and files it copies)
IMAGES = {
    "graph-engine": (ROOT / "docker" / "graph-engine.requirements.lock",
                     ["graph_engine", "infra/__init__.py", "infra/contract.py"]),
    "connector": (ROOT / "requirements.lock", ["infra", "flyte_agent", "graph_engine", "workflows"]),
}
MB = 1_000_000


def du(path: Path) -> int:
    """Bytes under `path`, as `du -sb` counts them (apparent sizes, directories included)."""
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def sources_bytes(paths: list[str]) -> int:
    """The project sources an image copies (no caches)."""
    files = [p for name in paths for p in ([ROOT / name] if (ROOT / name).is_file()
                                           else (ROOT / name).rglob("*.py"))]
    return sum(f.stat().st_size for f in files)


def install(uv: str, python: str, requirements: Path, where: Path) -> Path:
    """A fresh venv at `where` holding exactly `requirements`; returns its site-packages."""
    subprocess.run([uv, "venv", "--quiet", "--python", python, str(where)], check=True)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(where / "bin" / "python"), "--no-deps",
                    "--compile-bytecode", "-r", str(requirements)], check=True)
    (site,) = where.glob("lib/python*/site-packages")
    return site


def pins(requirements: Path) -> int:
    lines = requirements.read_text().splitlines()
    return sum(1 for line in lines if "==" in line and not line.startswith("#"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter the venvs are made from")
    parser.add_argument("--top", type=int, default=5, help="largest site-packages entries to list")
    args = parser.parse_args()
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        print("error: uv not found; `make setup` installs it into .venv", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphfleet-image-sizes-") as scratch:
        for image, (requirements, copied) in IMAGES.items():
            site = install(uv, args.python, requirements, Path(scratch) / image)
            size = du(site)
            largest = sorted(((du(entry), entry.name) for entry in site.iterdir()), reverse=True)[: args.top]
            rows.append((image, requirements.relative_to(ROOT), pins(requirements), size,
                         sources_bytes(copied), largest))
            shutil.rmtree(Path(scratch) / image)  # before the next install: keep disk use to one venv
    print("| image | installs | packages | site-packages (du -sb) | sources copied |")
    print("|---|---|---|---|---|")
    for image, requirements, count, size, sources, _ in rows:
        print(f"| {image} | `{requirements}` | {count} | {size / MB:,.0f} MB | {sources / MB:.2f} MB |")
    print("\nBoth images add the python:3.11.11-slim-bookworm base (not measured here).")
    for image, *_, largest in rows:
        print(f"\nlargest in {image}: " + ", ".join(f"{name} {size / MB:,.0f} MB" for size, name in largest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
