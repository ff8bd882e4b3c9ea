#!/usr/bin/env bash
# System packages the test suite drives for real: Chromium for the browser demo's tests,
# podman, runc and debootstrap to build and run the CPU image (tests/docker/test_container.py).
# Installed only when missing; tests that need a missing one skip with the reason.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver)
command -v podman >/dev/null 2>&1 || need+=(podman runc)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "note: ${need[*]} missing and not root: the tests that need them will be skipped" >&2
    fi
fi
