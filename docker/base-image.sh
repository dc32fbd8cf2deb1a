#!/usr/bin/env bash
# Builds the local Debian bookworm base image that every team-stack image starts FROM:
#   sudo docker/base-image.sh            # no-op when the image already exists
#   sudo docker/base-image.sh --force    # rebuild it
# Why not `FROM debian:bookworm`: Docker Hub is not reachable everywhere this project is built,
# while a Debian mirror is. debootstrap writes a minimal root filesystem from the mirror and
# `docker import` turns it into an image, so no registry is involved at all.
# Needs root (debootstrap, chroot), debootstrap and a running Docker daemon.
#
# Settings (environment):
#   FRUGAL_BASE_IMAGE       image name            (default frugal/debian-bookworm:local)
#   DEBIAN_MIRROR           Debian archive        (default http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR  security archive      (default http://deb.debian.org/debian-security)
#   DEBIAN_SNAPSHOT         e.g. 20250520T000000Z: use snapshot.debian.org at that time for a
#                           byte-for-byte reproducible package set (overrides both mirrors)
set -euo pipefail

IMAGE=${FRUGAL_BASE_IMAGE:-frugal/debian-bookworm:local}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
if [[ -n ${DEBIAN_SNAPSHOT:-} ]]; then
    MIRROR=http://snapshot.debian.org/archive/debian/$DEBIAN_SNAPSHOT
    SECURITY_MIRROR=http://snapshot.debian.org/archive/debian-security/$DEBIAN_SNAPSHOT
fi
# What the Python images need on top of minbase; everything else comes from their Dockerfiles.
PACKAGES=python3,python3-venv,python3-pip,ca-certificates

if [[ ${1:-} != --force ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base-image: $IMAGE already exists (pass --force to rebuild)"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "base-image: debootstrap needs root; run: sudo $0 $*" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "base-image: install debootstrap (apt-get install debootstrap)" >&2; exit 1; }

# /var/tmp, not the repo: the root filesystem is ~400 MB and must never land in the work tree.
rootfs=$(mktemp -d /var/tmp/frugal-rootfs.XXXXXX)
cleanup() {
    # debootstrap and apt mount /proc and /sys inside the target; a failed run can leave them
    # mounted, and rm -rf across a mounted /proc or /sys is what must never happen.
    for m in proc sys dev/pts dev; do umount -l "$rootfs/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

start=$(date +%s)
echo "base-image: debootstrap $SUITE from $MIRROR into $rootfs"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"

# The same sources layout as the official debian image (deb822), with updates and security,
# so `apt-get install` in the Dockerfiles sees current packages.
rm -f "$rootfs/etc/apt/sources.list"
cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# Container conventions of the official image: services never start during apt-get install,
# no recommended packages, and apt caches are dropped after every install.
cat > "$rootfs/usr/sbin/policy-rc.d" <<'EOF'
#!/bin/sh
exit 101
EOF
chmod +x "$rootfs/usr/sbin/policy-rc.d"
echo 'APT::Install-Recommends "false";' > "$rootfs/etc/apt/apt.conf.d/90frugal-no-recommends"
cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF

# Security and point-release updates on top of what debootstrap fetched from the release.
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade'

# Slim the image: package lists, caches, docs and logs are rebuilt or unneeded in a container.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log \
       "$rootfs"/var/log/apt/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/tmp/*
: > "$rootfs/etc/resolv.conf"   # Docker writes its own at run time
: > "$rootfs/etc/hostname"

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap $SUITE minbase from $MIRROR + $PACKAGES" \
    - "$IMAGE" >/dev/null

echo "base-image: built $IMAGE in $(( $(date +%s) - start )) s," \
     "$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
