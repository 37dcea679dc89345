#!/usr/bin/env bash
# Install the Debian packages that build and run the container images offline (see
# tests/support/images.py): buildah (builds the Dockerfiles, no daemon), mmdebstrap (makes the base
# image from Debian's packages), runc (the image tests run the images with it).
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get.
# Exit status 0 when everything is there afterwards, 1 when something is still missing.
set -euo pipefail

missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo"
else
  echo "install-image-deps: missing ${missing[*]} and not root; install them with apt-get" >&2
  exit 1
fi

echo "install-image-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# No recommends: buildah's fuse-overlayfs and mmdebstrap's fakechroot/uidmap serve rootless builds,
# and these run as root.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
