"""What a release ships: the project's own folders and files, never the operator's
configuration.

The bundle holds, of the folders and files in SHIPPED only, what git tracks plus
untracked files git does not ignore, as a tarball named by a hash of their content (an
unchanged checkout deploys as the same release). Anything else in the checkout (an
``ops/`` folder, ``cluster.yaml.bak``, ``beagle.env.old``) stays on the operator's
machine. Within them, a file that looks like a secret or a deployment config (a private
key, an env file, YAML with a ``beagle:`` key at any indentation, a backup of one) stops
the deploy instead of travelling to every host.
"""

import fnmatch
import hashlib
import io
import re
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
# What a host runs: the web tier and the workers, the scripts and the stress test the
# operator's tasks run there, the tools they import, the bundled models; the pins.
SHIPPED = (
    "app",
    "apache",
    "wsgi",
    "scripts",
    "stress",
    "tools",
    "models",
    "requirements.txt",
    "pyproject.toml",
    "README.md",
)
SECRET_NAMES = (
    "fabric.yaml",
    "fabric.yml",
    ".fabric.yaml",
    ".fabric.yml",
    "*.env",
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
)
# Whatever their names: a Fabric config for Beagle (YAML, or a copy of one, with a
# `beagle:` key at any indentation), or a private key.
FABRIC_CONFIG = re.compile(rb"^\s*beagle:", re.M)
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
YAML = ("*.yaml", "*.yml", "*.yaml.*", "*.yml.*")


@dataclass
class Bundle:
    id: str
    tarball: bytes
    requirements: bytes

    @classmethod
    def from_checkout(cls, root: Path = ROOT) -> Self:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SHIPPED],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
        files = sorted(p.decode() for p in listed if p and (root / p.decode()).is_file())
        refused = secrets_among(root, files)
        if refused:
            raise ValueError(
                f"refusing to bundle {', '.join(refused)}: they look like secrets "
                "or deployment configuration (Fabric config, env file, key); move "
                "them out of the checkout or add them to .gitignore"
            )
        digest, buffer = hashlib.sha256(), io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for name in files:
                data = (root / name).read_bytes()
                digest.update(name.encode() + b"\0" + data)
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o755 if (root / name).stat().st_mode & 0o100 else 0o644
                archive.addfile(info, io.BytesIO(data))
        return cls(
            digest.hexdigest()[:12], buffer.getvalue(), (root / "requirements.txt").read_bytes()
        )


def secrets_among(root: Path, files: Iterable[str]) -> list[str]:
    """The files, of ``files`` under ``root``, that look like secrets."""

    def matches(name: str, patterns: Iterable[str]) -> bool:
        return any(fnmatch.fnmatch(Path(name).name, pattern) for pattern in patterns)

    def looks_secret(name: str) -> bool:
        data = (root / name).read_bytes()[:65536]
        return (
            matches(name, SECRET_NAMES)
            or PRIVATE_KEY.search(data) is not None
            or matches(name, YAML)
            and FABRIC_CONFIG.search(data) is not None
        )

    return [name for name in files if looks_secret(name)]
