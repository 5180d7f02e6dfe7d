"""The env file (<etc>/beagle.env): Beagle's settings for systemd's EnvironmentFile= and
for a shell's ``set -a; . beagle.env``, which must read it the same way.

Each line is ``NAME='value'``. Inside single quotes both take every character
literally, so a value may hold spaces, ``#``, ``;``, ``&``, ``|``, ``*`` or ``~`` and
still mean one thing to both; values holding a quote of either kind, a backslash, ``$``,
a backtick, a newline or another control character are refused rather than escaped, so
nothing in the file is ever expanded or executed.
"""

import re
from collections.abc import Mapping

NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
UNSAFE = re.compile(r"['\"\\$`\x00-\x1f\x7f]")
LINE = re.compile(r"([A-Z_][A-Z0-9_]*)='([^']*)'")
HEADER = (
    "# Beagle's settings, for Apache (through a systemd drop-in) and the workers.\n"
    "# Written by fab deploy; see the README for every setting.\n"
)


def render(variables: Mapping[str, object]) -> str:
    """The file's text for ``variables`` (name -> value); ValueError names a bad one."""
    lines = []
    for name, value in variables.items():
        value = str(value)
        if not NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        bad = UNSAFE.search(value)
        if bad:
            raise ValueError(
                f"{name} holds {bad.group()!r}: quotes, backslashes, '$', "
                "backticks and control characters are refused in beagle.env"
            )
        lines.append(f"{name}='{value}'\n")
    return HEADER + "".join(lines)


def parse(text: str) -> dict[str, str]:
    """The variables in a file ``render`` wrote (comments and blank lines skipped)."""
    variables = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = LINE.fullmatch(line)
        if not match:
            raise ValueError(f"beagle.env: not a NAME='value' line: {line[:60]!r}")
        variables[match.group(1)] = match.group(2)
    return variables
