#!/bin/sh
# Post-image: the same hybrid ISO as `cargo xtask image` (image/src/iso.rs): the kernel and
# the initramfs under /boot, the menu of image/grub.cfg, grub-mkrescue around them (BIOS and
# UEFI in one file that boots from a CD or a USB stick).
# BINARIES_DIR, HOST_DIR and BR2_EXTERNAL_HAVMS_PATH are set by Buildroot.
set -eu

STAGING="${BINARIES_DIR}/iso-root"
rm -rf "${STAGING}"
mkdir -p "${STAGING}/boot/grub"
cp "${BR2_EXTERNAL_HAVMS_PATH}/../image/grub.cfg" "${STAGING}/boot/grub/grub.cfg"
cp "${BINARIES_DIR}/bzImage" "${STAGING}/boot/vmlinuz"
cp "${BINARIES_DIR}/rootfs.cpio.gz" "${STAGING}/boot/initramfs.img"
PATH="${HOST_DIR}/bin:${HOST_DIR}/sbin:${PATH}" \
	grub-mkrescue -d "${HOST_DIR}/lib/grub/i386-pc" -o "${BINARIES_DIR}/havms.iso" "${STAGING}"
rm -rf "${STAGING}"
