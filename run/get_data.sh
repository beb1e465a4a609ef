#!/usr/bin/env bash
# Get the default job's data ready: Fashion-MNIST prepared once into datasets/fashion-mnist.
# The IDX files come from Debian's dataset-fashion-mnist package (installed here when running
# as root with apt-get), else from the download cache or the official site (data.prepare).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
package=dataset-fashion-mnist
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
        && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's $package" >&2
    apt-get install -y -q "$package" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q "$package" >/dev/null; } \
        || echo "apt-get could not install $package; data.prepare will try the download" >&2
fi
cd "$root"
exec python3 -m data.prepare fashion-mnist "$root/datasets/fashion-mnist" "$@"
