#!/bin/sh
# Post-build: what image/src/layout.rs and image/src/grub.rs add to the Debian image that no
# package installs: GRUB for the installed disk (Buildroot's grub2 made the images with the
# builtin modules and embedded config of the defconfig) where havms-installer finds them, and
# the mount point of the data partition.
# $1: the target directory; BINARIES_DIR and BUILD_DIR are set by Buildroot.
set -eu

TARGET_DIR="$1"
GRUB_OUT="${TARGET_DIR}/usr/share/havms/grub"

mkdir -p "${GRUB_OUT}" "${TARGET_DIR}/var/lib/havms"
cp "${BINARIES_DIR}/grub.img" "${GRUB_OUT}/core.img"
cp "${BINARIES_DIR}/efi-part/EFI/BOOT/bootx64.efi" "${GRUB_OUT}/BOOTX64.EFI"
for boot_img in "${BUILD_DIR}"/grub2-*/build-i386-pc/grub-core/boot.img; do
	cp "${boot_img}" "${GRUB_OUT}/boot.img"
done
