#!/bin/busybox sh
# /sbin/init on the root filesystem the `rootfs` guest installs on its virtio disk
# (guest-init.sh, mode rootfs): counts its boots in /var/boots on that disk, reboots after the
# first and powers off after the second, so each boot proves the previous one's write persisted.
/bin/busybox --install -s /bin 2>/dev/null
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev
n=$(cat /var/boots 2>/dev/null); n=$(( ${n:-0} + 1 )); echo $n > /var/boots; sync
root=$(awk '$2 == "/" { r = $1 " " $3 } END { print r }' /proc/mounts)
echo "ROOTFS-UP boot=$n root=$root marker=$(cat /etc/marker) up=$(cut -d' ' -f1 /proc/uptime)"
[ $n -lt 2 ] && reboot -f
poweroff -f
