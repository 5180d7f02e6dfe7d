"""Air-gapped hosts: their Python packages come from the operator's machine.

With `beagle.wheels: <folder>` in the Fabric config, deploy asks each host for its
Python, CPU and glibc, downloads matching wheels for requirements.txt into
<folder>/<key>/ on the operator's machine (once; the key names requirements and target),
uploads those the host lacks to <prefix>/wheels/<key>/ (through a private directory, as
provisioning/remote.py does every file), and installs with pip --no-index.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

from fabric import Connection

from provisioning.remote import install, run

MANYLINUX_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def target(c: Connection) -> tuple[str, str, int]:
    """(python version "3.11", machine "x86_64", glibc minor 36) of the host."""
    python = run(c, "/usr/bin/python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
    machine = run(c, "uname -m").stdout.strip()
    glibc = run(c, "getconf GNU_LIBC_VERSION").stdout.split()[-1]  # "glibc 2.36"
    return python.stdout.strip(), machine, int(glibc.split(".")[1])


def platforms(machine: str, glibc_minor: int) -> list[str]:
    """Every manylinux tag a glibc 2.<minor> host accepts, newest first."""
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc_minor, 4, -1)]
    tags += [
        f"{legacy}_{machine}" for minor, legacy in MANYLINUX_LEGACY.items() if minor <= glibc_minor
    ]
    return tags + [f"linux_{machine}"]


def collect(
    folder: str, requirements: bytes, python: str, machine: str, glibc_minor: int
) -> tuple[str, Path]:
    """Download the wheels for ``requirements`` on this machine; (key, local folder)."""
    key = hashlib.sha256(requirements + f"{python}-{machine}-{glibc_minor}".encode()).hexdigest()[
        :12
    ]
    here = Path(folder).expanduser() / key
    if (here / ".complete").exists():
        return key, here
    here.mkdir(parents=True, exist_ok=True)
    listing = here / "requirements.txt"
    listing.write_bytes(requirements)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--dest",
        str(here),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python,
        "-r",
        str(listing),
    ]
    for tag in platforms(machine, glibc_minor):
        command += ["--platform", tag]
    subprocess.run(command, check=True)
    (here / ".complete").touch()
    return key, here


def upload(c: Connection, here: Path, there: str) -> int:
    """Copy the wheels the host does not have yet; how many were copied."""
    run(c, f"install -d -m 755 {there}")
    present = set(run(c, f"ls -1 {there}").stdout.split())
    missing = [p for p in sorted(here.glob("*.whl")) if p.name not in present]
    install(c, [(wheel, f"{there}/{wheel.name}") for wheel in missing])
    return len(missing)
