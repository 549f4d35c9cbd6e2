#!/usr/bin/env bash
# Builds FlashMQ (the fastest peer we compare against, https://github.com/halfgaar/FlashMQ)
# from a release tag into .peers/ (ignored by git: its code is never committed here).
#
# Usage: tuning/build-flashmq.sh [tag]          (default v1.26.2)
# Env:   FLASHMQ_GIT (a clone or bare mirror to take the tag from; default: clone from GitHub)
# Needs: git, cmake, g++, libssl-dev. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-v1.26.2}
DEST=.peers/flashmq-$TAG
if [ -x "$DEST/build/flashmq" ]; then echo "$DEST/build/flashmq"; exit 0; fi
rm -rf "$DEST" && mkdir -p "$DEST/src"
if [ -n "${FLASHMQ_GIT:-}" ]; then
  git --git-dir="$FLASHMQ_GIT" archive "$TAG" | tar -x -C "$DEST/src"
else
  git clone --quiet --depth 1 --branch "$TAG" https://github.com/halfgaar/FlashMQ "$DEST/src"
fi
cmake -S "$DEST/src" -B "$DEST/build" -DCMAKE_BUILD_TYPE=Release >"$DEST/cmake.log" 2>&1
cmake --build "$DEST/build" -j "$(nproc)" >"$DEST/build.log" 2>&1
echo "$DEST/build/flashmq"
