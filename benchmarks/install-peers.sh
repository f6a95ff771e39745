#!/usr/bin/env bash
# Install the peer libraries the benchmarks compare against, without replacing the CPU torch.
set -euo pipefail
pip install -e ".[peers]"
pip install --no-deps "torchattacks>=3.5"
