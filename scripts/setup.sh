#!/usr/bin/env bash
# Set up selfsup on a fresh machine: PyTorch (if missing), the package with its test tools, and, when running
# as root on Debian, the Fashion-MNIST package (elsewhere selfsup downloads it on first use, checksum-verified)
# and the fortunes package (the text demo's corpus, /usr/share/games/fortunes; elsewhere pass text with --data).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
   && [ -f /etc/debian_version ]; then
  echo "setup: installing Debian package dataset-fashion-mnist" >&2
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "setup: could not install dataset-fashion-mnist; selfsup will download Fashion-MNIST when needed" >&2
fi

if [ ! -d /usr/share/games/fortunes ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
   && [ -f /etc/debian_version ]; then
  echo "setup: installing Debian package fortunes" >&2
  (apt-get install -y -q fortunes >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fortunes >/dev/null 2>&1)) \
    || echo "setup: could not install fortunes; the text demo (--data fortunes) needs it" >&2
fi

if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "setup: installing PyTorch" >&2
  "$PY" -m pip install -q "torch>=2.11,<2.15" "torchvision>=0.26,<0.30"
fi
"$PY" -m pip install -q -e ".[dev]" 2>&1 | grep -v -i "running pip as the 'root' user" || true
"$PY" -c "import selfsup" # fail here, not later, if the install did not take
