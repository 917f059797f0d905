#!/bin/busybox sh
# /init of the nested guest the engine scenarios boot (qemu-tests/src/engine/payload.rs packs it).
# The kernel argument guest=MODE picks what it does; every line the checks read has a fixed
# prefix so it cannot be confused with anything else on the serial port.
/bin/busybox --install -s /bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev
mkdir -p /dev/shm; mount -t tmpfs -o size=90% shm /dev/shm
MODE=$(sed -n 's/.*guest=\([a-z0-9-]*\).*/\1/p' /proc/cmdline)
arg() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
up() { cut -d' ' -f1 /proc/uptime; }
# waitp PATH: up to 5 s for a device the drivers probe asynchronously.
waitp() { i=0; while [ ! -e "$1" ] && [ $i -lt 50 ]; do i=$((i+1)); usleep 100000; done; }
devices() {
  for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net; do
    insmod /mod/$m.ko || echo "GUEST-INSMOD-FAILED $m"
  done
}
net_up() {
  ip link set lo up; ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0
}
echo "HAVMS-GUEST-UP mode=$MODE cpus=$(grep -c ^processor /proc/cpuinfo) mem_kib=$(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo) up=$(up)"
case $MODE in
  boot)
    poweroff -f ;;
  counter)
    # Every 100 ms; a restored guest continues the numbering, a rebooted one starts again at 1.
    i=0; while true; do i=$((i+1)); echo "COUNT $i up=$(up)"; usleep 100000; done ;;
  memwrite)
    # Rewrites 1 MiB of random data every round, walking over 16 MiB of a tmpfs file: memory
    # keeps changing, so a capture that misses pages hashes differently.
    i=0; while true; do
      i=$((i+1)); dd if=/dev/urandom of=/dev/shm/m bs=4096 count=256 seek=$(( (i % 16) * 256 )) conv=notrunc 2>/dev/null
      echo "COUNT $i up=$(up)"; usleep 100000
    done ;;
  dirty)
    # Bench: a tmpfs file of pages=N pages of random data, copied onto itself every second:
    # each round dirties the same N guest pages (plus the little the kernel itself writes), and
    # they are not zero, so a full capture has to save them too.
    n=$(arg pages); dd if=/dev/urandom of=/dev/shm/d bs=4096 count=$n 2>/dev/null
    echo "DIRTY-READY pages=$n"
    i=0; while true; do
      i=$((i+1)); dd if=/dev/shm/d of=/dev/shm/d bs=4096 count=$n conv=notrunc 2>/dev/null
      echo "DIRTY $i up=$(up)"; sleep 1
    done ;;
  disk-write)
    devices; waitp /dev/vda; waitp /sys/class/net/eth0; net_up
    # 4 MiB of random data at 1 MiB into /dev/vda, flushed; the next boot reads it back.
    dd if=/dev/urandom of=/tmp/p bs=1M count=4 2>/dev/null
    dd if=/tmp/p of=/dev/vda bs=1M seek=1 conv=fsync 2>/dev/null && sync && echo "DISK-WROTE sha=$(sha256sum < /tmp/p | cut -d' ' -f1)"
    # TCP echo, guest -> node: the node runs an echo server on 10.0.2.1:7001.
    id=G2N-$(cut -c1-8 /proc/sys/kernel/random/uuid)
    got=; i=0; while [ $i -lt 20 ] && [ -z "$got" ]; do
      got=$(echo "$id" | nc -w 5 10.0.2.1 7001 2>/dev/null); i=$((i+1)); [ -z "$got" ] && sleep 1
    done
    echo "G2N-SENT $id"; echo "G2N-GOT ${got:-nothing}"
    # TCP echo, node -> guest: one connection served, then reboot (the VM ends; the disk stays).
    echo "GUEST-ECHO-LISTENING"
    nc -l -p 7000 -e cat
    echo "GUEST-ECHO-SERVED"
    reboot -f ;;
  disk-read)
    devices; waitp /dev/vda
    echo "DISK-READ sha=$(dd if=/dev/vda bs=1M skip=1 count=4 2>/dev/null | sha256sum | cut -d' ' -f1)"
    poweroff -f ;;
  pinger)
    devices; waitp /sys/class/net/eth0; net_up
    # One ping a line: `ok` when 10.0.2.1 (the node's tap) answered within 1 s.
    i=0; while true; do
      i=$((i+1)); p=fail; ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1 && p=ok
      echo "NET $i $p up=$(up)"; usleep 300000
    done ;;
  *)
    echo "GUEST-UNKNOWN-MODE '$MODE'"; poweroff -f ;;
esac
