#!/usr/bin/env bash
# Install what Beagle needs on this Debian or Ubuntu host, checking before each step:
# the apt packages, then a venv made from /usr/bin/python3 (the Python that Debian's
# mod_wsgi is built for), then the pinned requirements (only when they changed).
#   usage: scripts/bootstrap.sh VENV REQUIREMENTS_FILE...
# Extra apt packages can be named in BEAGLE_APT_EXTRA.
set -euo pipefail
venv=$1; shift
packages=(apache2 libapache2-mod-wsgi-py3 redis-server python3-venv ${BEAGLE_APT_EXTRA:-})

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    echo "bootstrap: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv from /usr/bin/python3"
    mkdir -p "$(dirname "$venv")"
    /usr/bin/python3 -m venv "$venv"
fi

stamp="$venv/.beagle-requirements"
wanted=$(cat "$@" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "bootstrap: installing $* into $venv"
    args=(); for file in "$@"; do args+=(-r "$file"); done
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${args[@]}"
    echo "$wanted" > "$stamp"
fi
