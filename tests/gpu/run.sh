#!/usr/bin/env bash
# The GPU checks, for a person on a machine with an NVIDIA GPU (see tests/gpu/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
make install
if ! command -v promtool >/dev/null; then
    echo "promtool is not on PATH: install the Debian package prometheus" >&2
    exit 1
fi
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
    echo "haproxy is not installed: the serving check needs it (Debian package haproxy)" >&2
    exit 1
fi
exec .venv/bin/python -m pytest -v -ra tests/gpu "$@"
