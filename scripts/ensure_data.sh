#!/bin/sh
# Make sure Fashion-MNIST is on this machine. fedsim looks for it, in order, in
# --data-dir, $FEDSIM_DATA, Debian's package dir, and torchvision's download.
# Here we only take care of the offline default: Debian's dataset-fashion-mnist.
set -eu
DEBIAN_DIR=/usr/share/datasets/fashion-mnist
if [ -n "${FEDSIM_DATA:-}" ] && [ -d "$FEDSIM_DATA" ]; then
    exit 0
fi
if [ -f "$DEBIAN_DIR/train-images-idx3-ubyte.gz" ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
            echo "fedsim: Fashion-MNIST missing; run 'apt-get install dataset-fashion-mnist' as root or set FEDSIM_DATA" >&2
            exit 1
        fi
    fi
    echo "fedsim: installing Debian package dataset-fashion-mnist (Fashion-MNIST)"
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
    exit 0
fi
# No apt: fedsim will try torchvision's download at run time (needs the internet).
echo "fedsim: warning: Fashion-MNIST not found locally; set FEDSIM_DATA to a folder with its idx files, pass --data-dir, or allow the torchvision download" >&2
exit 0
