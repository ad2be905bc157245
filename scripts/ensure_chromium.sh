#!/bin/sh
# Make sure headless Chromium is on this machine for the report's browser test
# (tests/flows/test_report.py renders report.html in it). Debian's package
# `chromium`; installed quietly through apt-get when missing. Without apt-get we
# only say so: the browser test then skips with that reason.
set -eu
for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "fedsim: chromium not found and apt-get is unavailable; the browser test will skip" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "fedsim: chromium missing and no root; the browser test will skip (as root: apt-get install chromium)" >&2
        exit 0
    fi
fi
echo "fedsim: installing Debian package chromium (headless browser for the report test)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && \
         $SUDO apt-get install -y -q chromium >/dev/null; }
