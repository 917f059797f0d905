#!/bin/busybox sh
# /init of the nested guest the engine scenarios boot (qemu-tests/src/engine/payload.rs packs it).
# The kernel argument guest=MODE picks what it does; every line the checks read has a fixed
# prefix so it cannot be confused with anything else on the serial port.
/bin/busybox --install -s /bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev
mkdir -p /dev/shm; mount -t tmpfs -o size=90% shm /dev/shm
MODE=$(sed -n 's/.*guest=\([a-z0-9-]*\).*/\1/p' /proc/cmdline)
PEER=$(sed -n 's/.* peer=\([^ ]*\).*/\1/p' /proc/cmdline)
arg() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
up() { cut -d' ' -f1 /proc/uptime; }
# waitp PATH: up to 5 s for a device the drivers probe asynchronously.
waitp() { i=0; while [ ! -e "$1" ] && [ $i -lt 50 ]; do i=$((i+1)); usleep 100000; done; }
# The virtio drivers and ext4, dependencies first (payload.rs resolves the order).
devices() {
  for m in $(cat /mod/load-order); do insmod /mod/$m || echo "GUEST-INSMOD-FAILED $m"; done
}
# net_up: eth0 at the kernel argument ip= (default 10.0.2.15/24, the node's tap at 10.0.2.1).
net_up() {
  a=$(arg ip); ip link set lo up; ip link set eth0 up; ip addr add ${a:-10.0.2.15/24} dev eth0
}
# stateful_setup [keep]: drivers, NIC up, an ext2 filesystem made on /dev/vda and mounted on /mnt
# with the kernel argument marker=M written to /mnt/marker. With `keep`, a filesystem already
# on /dev/vda (a rebooted guest's, or the journaled ext4 the HA scenarios' harness makes: see
# qemu-tests/src/disk.rs, guest_filesystem) is mounted as it is, by the ext4 driver (which
# mounts ext2 too).
stateful_setup() {
  devices; waitp /dev/vda; waitp /sys/class/net/eth0; net_up
  mkdir -p /mnt
  if [ "$1" = keep ] && mount -t ext4 /dev/vda /mnt 2>/dev/null; then
    echo "GUEST-DISK-KEPT journal=$([ -d /proc/fs/jbd2 ] && ls /proc/fs/jbd2 | grep -q vda && echo yes || echo no)"
  elif [ "$1" = keep ] && [ "$(dd if=/dev/vda bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 53ef ]; then
    # A filesystem is there but does not mount: say so, never format it over (its entries
    # would vanish and the scenario would blame the failover).
    echo "GUEST-DISK-FAILED mount of the filesystem on /dev/vda"; return 1
  else { mke2fs -q /dev/vda && mount -t ext2 /dev/vda /mnt; } || echo "GUEST-DISK-FAILED"; fi
  arg marker > /mnt/marker; sync
  echo "STATEFUL-READY marker=$(cat /mnt/marker)"
}
# dev_rounds: every ~0.5 s ping the node (or the kernel argument peer=), write the round number to a file on the disk, sync,
# drop the page cache and read both files back: each line proves the NIC and the disk work.
dev_rounds() {
  j=0; while true; do
    j=$((j+1)); p=fail; ping -c 1 -W 1 ${PEER:-10.0.2.1} >/dev/null 2>&1 && p=ok
    echo $j > /mnt/last; sync; echo 3 > /proc/sys/vm/drop_caches
    echo "DEV $j net=$p marker=$(cat /mnt/marker) last=$(cat /mnt/last) up=$(up)"; usleep 300000
  done
}
# count_forever: `COUNT n up=s` every 100 ms; a restored guest continues the numbering.
count_forever() {
  i=0; while true; do i=$((i+1)); echo "COUNT $i up=$(up)"; usleep 100000; done
}
echo "HAVMS-GUEST-UP mode=$MODE cpus=$(grep -c ^processor /proc/cpuinfo) mem_kib=$(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo) up=$(up)"
case $MODE in
  boot)
    poweroff -f ;;
  counter)
    # Every 100 ms; a restored guest continues the numbering, a rebooted one starts again at 1.
    count_forever ;;
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
    # they are not zero, so a full capture has to save them too. With dirty_every=0 the file is
    # written once and the guest only counts (a full copy's worth of random memory, then calm).
    n=$(arg pages); dd if=/dev/urandom of=/dev/shm/d bs=4096 count=$n 2>/dev/null
    echo "DIRTY-READY pages=$n"
    [ "$(arg dirty_every)" = 0 ] && count_forever
    i=0; while true; do
      i=$((i+1)); dd if=/dev/shm/d of=/dev/shm/d bs=4096 count=$n conv=notrunc 2>/dev/null
      echo "DIRTY $i up=$(up)"; sleep 1
    done ;;
  disk-write)
    devices; waitp /dev/vda
    # The second boot (the guest rebooted in place, same command line) finds the mark the first
    # wrote into sector 0 and reads the data back.
    if [ "$(head -c 18 /dev/vda)" = HAVMS-DISK-WRITTEN ]; then
      echo "DISK-READ sha=$(dd if=/dev/vda bs=1M skip=1 count=4 2>/dev/null | sha256sum | cut -d' ' -f1)"
      poweroff -f
    fi
    waitp /sys/class/net/eth0; net_up
    # 4 MiB of random data at 1 MiB into /dev/vda, flushed, then the mark.
    dd if=/dev/urandom of=/tmp/p bs=1M count=4 2>/dev/null
    dd if=/tmp/p of=/dev/vda bs=1M seek=1 conv=fsync 2>/dev/null && sync && echo "DISK-WROTE sha=$(sha256sum < /tmp/p | cut -d' ' -f1)"
    echo -n HAVMS-DISK-WRITTEN | dd of=/dev/vda conv=fsync 2>/dev/null
    # TCP echo, guest -> node: the node runs an echo server on 10.0.2.1:7001.
    id=G2N-$(cut -c1-8 /proc/sys/kernel/random/uuid)
    got=; i=0; while [ $i -lt 20 ] && [ -z "$got" ]; do
      got=$(echo "$id" | nc -w 5 10.0.2.1 7001 2>/dev/null); i=$((i+1)); [ -z "$got" ] && sleep 1
    done
    echo "G2N-SENT $id"; echo "G2N-GOT ${got:-nothing}"
    # TCP echo, node -> guest: one connection served, then reboot onto the same disk.
    echo "GUEST-ECHO-LISTENING"
    nc -l -p 7000 -e cat
    echo "GUEST-ECHO-SERVED"
    reboot -f ;;
  pinger)
    devices; waitp /sys/class/net/eth0; net_up
    # One ping a line: `ok` when 10.0.2.1 (the node's tap) answered within 1 s.
    i=0; while true; do
      i=$((i+1)); p=fail; ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1 && p=ok
      echo "NET $i $p up=$(up)"; usleep 300000
    done ;;
  stateful)
    # engine-restore: a counter every 100 ms, and every ~0.5 s a device round (see dev_rounds).
    stateful_setup; dev_rounds &
    count_forever ;;
  protected)
    # engine-failover: `stateful`, plus a TCP server on port 7000 that streams numbered lines
    # of random length to whoever connects. A byte the node saw from an epoch the replica
    # does not hold would be sent again differently after a failover and garble the stream.
    stateful_setup; dev_rounds &
    printf '#!/bin/busybox sh\ni=0; while true; do i=$((i+1)); echo "TCP $i $(printf "%%$(( ${RANDOM:-$i} %% 40 ))s" | tr " " x) END"; usleep 200000; done\n' > /tmp/lines
    chmod +x /tmp/lines
    ( while true; do nc -l -p 7000 -e /tmp/lines; done ) &
    echo "TCP-LISTENING"
    count_forever ;;
  ledger)
    # failover-link: `stateful` (disk kept across a reboot) and the ledger server
    # (qemu-tests/ledger) on port ledger_port= (7000), its log on the disk; a client outside
    # the nodes appends to it across the failover. Its LEDGER-READY / LEDGER-FAILED lines go
    # to the console.
    stateful_setup keep || { echo "LEDGER-FAILED no disk"; count_forever; }
    dev_rounds &
    /bin/havms-ledger --log /mnt/ledger.log --port $(p=$(arg ledger_port); echo ${p:-7000}) &
    count_forever ;;
  rootfs)
    # The installer and the initramfs of a guest whose root is on its virtio disk: boot 1 finds
    # no root filesystem there, formats the disk, installs busybox and /sbin/init
    # (guest-rootfs-init.sh) and reboots; later boots mount it and switch_root onto it.
    devices; waitp /dev/vda; mkdir -p /new
    if mount -t ext2 /dev/vda /new 2>/dev/null && [ -x /new/sbin/init ]; then
      echo "ROOTFS-SWITCH"
      umount /dev/shm /dev /sys /proc 2>/dev/null
      exec switch_root /new /sbin/init
    fi
    umount /new 2>/dev/null
    mke2fs -q -L havms-root /dev/vda || echo "GUEST-DISK-FAILED mke2fs"
    mount -t ext2 /dev/vda /new || echo "GUEST-DISK-FAILED mount"
    mkdir -p /new/bin /new/sbin /new/proc /new/sys /new/dev /new/etc /new/var
    cp /bin/busybox /new/bin/busybox && cp /rootfs-init /new/sbin/init
    arg marker > /new/etc/marker; echo 0 > /new/var/boots
    sync; umount /new || echo "GUEST-DISK-FAILED umount"
    echo "ROOTFS-INSTALLED marker=$(arg marker)"
    reboot -f ;;
  serial-echo)
    # engine-serial: a tick every second (live output), and every line typed on the console
    # comes back as `SERIAL-GOT line`.
    ( i=0; while true; do i=$((i+1)); echo "TICK $i up=$(up)"; sleep 1; done ) &
    echo "SERIAL-READY"
    while read -r line; do echo "SERIAL-GOT $line"; done
    echo "SERIAL-EOF"; poweroff -f ;;
  *)
    echo "GUEST-UNKNOWN-MODE '$MODE'"; poweroff -f ;;
esac
