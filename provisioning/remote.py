"""Commands and files on a host over SSH, as root, whether the login user is root or a
sudoer.

`run` runs the whole command as root: directly when logged in as root, else as
``sudo bash -c '<command>'``, so every part of a compound command (``a && b``,
``set -a; . file; cmd``) runs under sudo, not only its first word.

Files never pass through a place another local user could read or pre-create: `upload`
puts them over SFTP into a directory only the login user can enter (``mktemp -d`` in
/var/tmp, mode 700), installs them from there as root with their final owner and mode
under umask 077, renames them into place, and removes the directory whatever happens.
"""

import hashlib
import io
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from fabric import Connection
from invoke.runners import Result

# /var/tmp, not /tmp: disk-backed, so a GPU host's gigabytes of wheels fit.
TEMPLATE = "/var/tmp/beagle-upload.XXXXXXXXXX"


def run(c: Connection, command: str, **kwargs: Any) -> Result:
    """Run ``command`` (a shell command line) as root; output hidden unless asked."""
    kwargs.setdefault("hide", True)
    if c.user == "root":
        return c.run(command, **kwargs)
    return c.sudo("bash -c " + shlex.quote(command), **kwargs)


def exists(c: Connection, path: str) -> bool:
    return run(c, f"test -e {shlex.quote(path)}", warn=True).ok


def read(c: Connection, path: str) -> str:
    """The text of a file only root may read, or "" if it does not exist."""
    return run(c, f"cat {shlex.quote(path)} 2>/dev/null", warn=True).stdout


@contextmanager
def private_dir(c: Connection) -> Iterator[str]:
    """A fresh directory on the host that only the login user can enter."""
    path = c.run(f"mktemp -d {TEMPLATE}", hide=True).stdout.strip()
    try:
        yield path
    finally:
        c.run(f"rm -rf {shlex.quote(path)}", hide=True, warn=True)


def upload(
    c: Connection, data: bytes, path: str, mode: str = "644", owner: str = "root:root"
) -> None:
    """Install ``data`` (bytes) at ``path`` with ``mode`` and ``owner``, atomically."""
    install(c, [(data, path)], mode, owner)


def install(
    c: Connection,
    files: Sequence[tuple[bytes | str | Path, str]],
    mode: str = "644",
    owner: str = "root:root",
) -> None:
    """Install each (bytes or local file path, remote path) with ``mode`` and ``owner``.
    Each parent folder must exist or is made mode 755; each file appears whole."""
    if not files:
        return
    user, group = owner.split(":")
    with private_dir(c) as private:
        steps = []
        for n, (source, path) in enumerate(files):
            staged = f"{private}/{n}"
            c.put(io.BytesIO(source) if isinstance(source, bytes) else str(source), remote=staged)
            target, new = shlex.quote(path), shlex.quote(f"{path}.beagle-new")
            parent = shlex.quote(str(PurePosixPath(path).parent))
            steps.append(
                f"{{ [ -d {parent} ] || install -d -m 755 {parent}; }} && "
                f"(umask 077 && install -m {mode} -o {user} -g {group} {staged} {new})"
                f" && mv -f {new} {target}"
            )
        run(c, " && ".join(steps))


def put_if_changed(
    c: Connection, path: str, content: str | bytes, mode: str = "644", owner: str = "root:root"
) -> bool:
    """Install ``content`` at ``path`` unless it is there already, with that mode and
    owner; True if anything changed."""
    data = content.encode() if isinstance(content, str) else content
    quoted = shlex.quote(path)
    current = run(c, f"sha256sum {quoted} && stat -c '%a %U:%G' {quoted}", warn=True).stdout
    if current == f"{hashlib.sha256(data).hexdigest()}  {path}\n{mode} {owner}\n":
        return False
    upload(c, data, path, mode, owner)
    return True
