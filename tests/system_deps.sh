#!/bin/sh
# Debian packages the tests need beyond the Python virtual environment.
#
#   orthanc, orthanc-dicomweb  a real PACS for tests/test_pacs.py (C-STORE, C-FIND, STOW-RS, QIDO-RS)
#   iproute2                   `ip netns`: the tests run Orthanc in a private, loopback-only network namespace
#
# Idempotent and quick when everything is installed: `apt-get update` runs only when a package is missing and
# its candidate is unknown to the local package lists.  Needs root (as in CI); otherwise it says what to install.
set -eu

PACKAGES="orthanc orthanc-dicomweb iproute2"

missing=""
for package in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system_deps.sh: missing Debian packages:$missing, and no apt-get on this machine" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "system_deps.sh: missing Debian packages:$missing; run as root: apt-get install$missing" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
needs_update=""
for package in $missing; do
    candidate=$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
        needs_update=1
    fi
done
[ -n "$needs_update" ] && apt-get update -qq
# shellcheck disable=SC2086  # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "system_deps.sh: installed$missing"
