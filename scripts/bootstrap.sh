#!/bin/bash
# One command on a fresh Debian 12 machine (as root): install what is needed, build, run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --workspace
exec scripts/demo.sh
