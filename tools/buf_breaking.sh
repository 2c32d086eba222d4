#!/usr/bin/env bash
# Fail when protos/ breaks wire or JSON compatibility with the previous commit's contract.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
if ! git rev-parse --verify --quiet HEAD~1 >/dev/null; then
  echo "buf breaking: no previous commit to compare with (shallow or first commit); skipped"
  exit 0
fi
if [ -z "$(git ls-tree HEAD~1 -- protos buf.yaml)" ]; then
  echo "buf breaking: the previous commit has no contract; skipped"
  exit 0
fi
npx --no-install buf breaking --against ".git#ref=HEAD~1"
echo "buf breaking: protos/ is compatible with HEAD~1"
