#!/usr/bin/env bash
# End-to-end check of the virtio devices with a real Debian guest under real KVM, one level down
# (TCG node with nested SVM, as vmm/dev/nested-run.sh), using the workspace's havms-vm.
# The guest loads virtio_ring, virtio, virtio_mmio, virtio_blk, failover, net_failover,
# virtio_net, virtio-rng (insmod, so nothing reads virtio_mmio.device= from the command line:
# the devices must come from the DSDT) and checks: 3 virtio devices bound, their IRQs,
# /dev/vda reads the node's marker, a write and a 4 MiB checksummed round trip, hwrng bytes, the
# MAC, ping both ways through a real tap on the node; the node then finds the guest's write in
# the image file. Usage: vmm/dev/virtio-e2e.sh (needs `cargo xtask image` run once, or KDIR=extracted kernel package, qemu-system-x86,
# busybox-static, cpio). SCENARIO=restore instead: the guest loops over disk write/read-back,
# hwrng and ping; the node pauses, snapshots, shuts the VM down, restores it in a new process
# and checks the loop continues (no reboot) with all three devices working. Prints the guest's check lines, then PASS/FAIL (exit status 0 on PASS).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../../../.." && pwd)   # workspace root
S=${WORKDIR:-/tmp/virtio-e2e}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SRC/target/dev-virtio-e2e}
mkdir -p "$S/run"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$SRC" && RUSTFLAGS="-C target-feature=+crt-static" nice cargo build -q --release \
     --target x86_64-unknown-linux-gnu -p havms-vmm)
fi
W=$S/run; cd "$W"
BIN=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release
CACHED=$(ls -d "$(dirname "$0")"/../../target/havms/cache/root/linux-image-*/ 2>/dev/null | head -1); K=${KDIR:-${CACHED:-/tmp/kcheck/k}}; KV=$(ls $K/lib/modules); M=$K/lib/modules/$KV/kernel; VMLINUZ=$(ls $K/boot/vmlinuz-* | head -1)
mk() { (cd "$1" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$2"; }

rm -rf g o; mkdir -p g/bin g/proc g/sys g/dev g/mod g/tmp; cp /bin/busybox g/bin/
for m in drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio_mmio.ko \
         drivers/block/virtio_blk.ko net/core/failover.ko drivers/net/net_failover.ko \
         drivers/net/virtio_net.ko drivers/char/hw_random/virtio-rng.ko; do cp $M/$m g/mod/; done
if [ "${SCENARIO:-io}" = restore ]; then
cat > g/init <<'IN'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev
say() { echo "<2>$*" > /dev/kmsg; }
for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net virtio-rng; do
  insmod /mod/$m.ko || say "G-INSMOD-FAIL $m"
done
ip link set lo up; ip link set eth0 up; ip addr add 10.77.0.2/24 dev eth0
say G-BOOTED
i=0
while true; do
  i=$((i+1))
  echo "BLOCK-$i" > /tmp/b
  dd if=/tmp/b of=/dev/vda bs=512 seek=$((4096 + i % 16)) conv=sync,fsync 2>/dev/null
  d=BAD; [ "$(dd if=/dev/vda bs=512 skip=$((4096 + i % 16)) count=1 iflag=direct 2>/dev/null | head -1)" = "BLOCK-$i" ] && d=ok
  r=BAD; [ "$(dd if=/dev/hwrng bs=8 count=1 2>/dev/null | wc -c)" = 8 ] && r=ok
  n=fail; ping -c 1 -W 1 10.77.0.1 >/dev/null 2>&1 && n=ok
  say "COUNT $i disk=$d rng=$r net=$n"
  sleep 0.3
done
IN
else
cat > g/init <<'IN'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev
say() { echo "<2>$*" > /dev/kmsg; }
for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net virtio-rng; do
  args=""; [ $m = virtio_mmio ] && args=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^virtio_mmio\.//p' | tr '\n' ' ')
  insmod /mod/$m.ko $args || say "G-INSMOD-FAIL $m"
done
sleep 1
say "G-DMESG $(dmesg | grep -i -E "virtio|mmio|platform" | tail -15 | tr "\n" "|")"
say "G-CMDLINE-ARGS $(tr " " "\n" < /proc/cmdline | sed -n "s/^virtio_mmio\.//p" | tr "\n" " ")"
say "G-ACPI $(ls /sys/bus/acpi/devices | tr "\n" " ")"
say "G-PLAT $(ls /sys/bus/platform/devices | tr "\n" " ")"
say "G-ACPIERR $(dmesg | grep -i -E "acpi.*(error|warn|fail)|LNRO|AE_" | tail -8 | tr "\n" "|")"
say "G-DSDT $(wc -c < /sys/firmware/acpi/tables/DSDT) $(od -An -tx1 /sys/firmware/acpi/tables/DSDT | tr -s " \n" " " | head -c 400)"
say "G-DEVICES $(ls /sys/bus/virtio/devices | tr '\n' ' ')"
for d in /sys/bus/virtio/devices/*; do say "G-VDEV $d id=$(cat $d/device) vendor=$(cat $d/vendor) status=$(cat $d/status) features=$(cat $d/features) driver=$(readlink $d/driver)"; done
say "G-VDMESG $(dmesg | grep -i -E "virtio|vd[a-z]|mmio" | grep -v "G-\|Command line\|command line\|unknown param" | tail -10 | tr "\n" "|")"
say "G-IRQS $(grep virtio /proc/interrupts | tr -s ' ' | tr '\n' '|')"
say "G-VDA-SIZE $(cat /sys/block/vda/size 2>/dev/null) ro=$(cat /sys/block/vda/ro 2>/dev/null)"
say "G-VDA-HEAD $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 10)"
echo GUEST-WROTE-THIS > /tmp/w; dd if=/tmp/w of=/dev/vda bs=512 seek=2048 conv=sync,fsync 2>/dev/null && say G-VDA-WRITE-OK
echo 3 > /proc/sys/vm/drop_caches
say "G-VDA-READBACK $(dd if=/dev/vda bs=512 skip=2048 count=1 iflag=direct 2>/dev/null | head -c 16)"
# 4 MiB through the queue and back, checksummed.
dd if=/dev/urandom of=/tmp/big bs=1M count=4 2>/dev/null
dd if=/tmp/big of=/dev/vda bs=1M seek=4 conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
a=$(md5sum < /tmp/big); b=$(dd if=/dev/vda bs=1M skip=4 count=4 2>/dev/null | md5sum)
[ "$a" = "$b" ] && say G-VDA-BULK-OK || say "G-VDA-BULK-BAD $a $b"
say "G-RNG $(cat /sys/class/misc/hw_random/rng_current 2>/dev/null) $(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
say "G-MAC $(cat /sys/class/net/eth0/address 2>/dev/null)"
ip link set lo up; ip link set eth0 up; ip addr add 10.77.0.2/24 dev eth0
sleep 1
ping -c 3 -W 2 10.77.0.1 >/tmp/ping 2>&1 && say G-PING-OK || { say G-PING-FAIL; say "$(cat /tmp/ping | tr '\n' '|')"; }
say "G-NET $(cat /sys/class/net/eth0/statistics/rx_packets) rx, $(cat /sys/class/net/eth0/statistics/tx_packets) tx"
# Let the node ping us too, then stop.
sleep 4
say HAVMS-GUEST-DONE
poweroff -f
IN
fi
chmod +x g/init; mk g g.cpio.gz

mkdir -p o/bin o/proc o/sys o/dev o/tmp o/mod o/inner; cp /bin/busybox o/bin/
cp "$BIN/havms-vm" "$BIN/havms-remote" o/bin/
cp $M/../virt/lib/irqbypass.ko o/mod/ 2>/dev/null || cp $M/virt/lib/irqbypass.ko o/mod/
cp $M/drivers/crypto/ccp/ccp.ko $M/arch/x86/kvm/kvm.ko $M/arch/x86/kvm/kvm-amd.ko $M/drivers/net/tun.ko o/mod/
cp "$VMLINUZ" o/inner/vmlinuz; cp g.cpio.gz o/inner/
if [ "${SCENARIO:-io}" = restore ]; then
cat > o/init <<'IN'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev; mount -t tmpfs t /tmp
insmod /mod/irqbypass.ko; insmod /mod/ccp.ko; insmod /mod/kvm.ko ignore_msrs=1 report_ignored_msrs=0; insmod /mod/kvm-amd.ko; insmod /mod/tun.ko
ls /dev/kvm >/dev/null && echo NODE-KVM-READY
mkdir -p /dev/net; [ -e /dev/net/tun ] || mknod /dev/net/tun c 10 200
dd if=/dev/zero of=/tmp/disk.img bs=1M count=16 2>/dev/null
tapup() { for i in $(seq 1 40); do [ -e /sys/class/net/tap0 ] && break; sleep 0.25; done
          ip link set tap0 address 02:00:00:00:00:01; ip link set tap0 up
          ip addr add 10.77.0.1/24 dev tap0; }
# The tap goes away with the VM process and comes back with the restored one; a fixed MAC
# stands for the LAN the production tap is bridged to (the guest's ARP entry stays right).
S=/tmp/api.sock
RUST_LOG=info havms-vm --kernel /inner/vmlinuz --initramfs /inner/g.cpio.gz --memory size=256M \
  --cmdline "console=ttyS0 panic=-1 quiet" --serial file=/tmp/ser1 --api-socket $S \
  --disk path=/tmp/disk.img --net tap=tap0,mac=52:54:00:aa:bb:cc --rng 2>/tmp/vm1.log &
vm1=$!
tapup
for i in $(seq 1 90); do sleep 1; grep -q 'COUNT 5 .*net=ok' /tmp/ser1 2>/dev/null && break; done
havms-remote --api-socket $S pause | sed 's/^/pause: /'
havms-remote --api-socket $S snapshot /tmp/snap | sed 's/^/snapshot: /'
echo "NODE-AT-SAVE $(grep -a COUNT /tmp/ser1 | tail -1)"
havms-remote --api-socket $S shutdown; wait $vm1
RUST_LOG=info havms-vm --restore /tmp/snap --serial file=/tmp/ser2 --api-socket $S 2>/tmp/vm2.log &
tapup
for i in $(seq 1 90); do sleep 1; [ "$(grep -a -c 'COUNT.*net=ok' /tmp/ser2 2>/dev/null)" -ge 3 ] && break; done
grep -a COUNT /tmp/ser2 | sed 's/^.*COUNT/NODE-AFTER COUNT/'
echo "NODE-REBOOTS $(grep -a -c G-BOOTED /tmp/ser2)"
havms-remote --api-socket $S shutdown; sleep 1
echo "NODE-VM2-LOG"; grep -a -i "virtio\|error\|warn" /tmp/vm2.log | head -10
poweroff -f
IN
else
cat > o/init <<'IN'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev; mount -t tmpfs t /tmp
insmod /mod/irqbypass.ko; insmod /mod/ccp.ko; insmod /mod/kvm.ko ignore_msrs=1 report_ignored_msrs=0; insmod /mod/kvm-amd.ko; insmod /mod/tun.ko
ls /dev/kvm >/dev/null && echo NODE-KVM-READY
mkdir -p /dev/net; [ -e /dev/net/tun ] || mknod /dev/net/tun c 10 200
dd if=/dev/zero of=/tmp/disk.img bs=1M count=16 2>/dev/null
echo HELLO-DISK | dd of=/tmp/disk.img conv=notrunc 2>/dev/null
RUST_LOG=info havms-vm --kernel /inner/vmlinuz --initramfs /inner/g.cpio.gz --memory size=256M \
  --cmdline "console=ttyS0 panic=-1 quiet" --serial tty \
  @VMDEV@ &
pid=$!
for i in $(seq 1 20); do [ -e /sys/class/net/tap0 ] && break; sleep 0.5; done
ip link set tap0 up; ip addr add 10.77.0.1/24 dev tap0
for i in $(seq 1 60); do
  ping -c 1 -W 1 10.77.0.2 >/dev/null 2>&1 && { echo NODE-PING-GUEST-OK; break; }
  kill -0 $pid 2>/dev/null || break
done
for i in $(seq 1 90); do kill -0 $pid 2>/dev/null || break; sleep 1; done
kill -0 $pid 2>/dev/null && { echo NODE-VM-HUNG; kill $pid; }
wait $pid; echo "NODE-VM-EXIT rc=$?"
echo "NODE-DISK $(dd if=/tmp/disk.img bs=512 skip=2048 count=1 2>/dev/null | head -c 16)"
poweroff -f
IN
fi
sed -i "s|@VMDEV@|${VMDEV---disk path=/tmp/disk.img --net tap=tap0,mac=52:54:00:aa:bb:cc --rng}|" o/init
chmod +x o/init; mk o o.cpio.gz
timeout 400 qemu-system-x86_64 -accel tcg -cpu max -m 2048 -nographic -no-reboot \
  -kernel "$VMLINUZ" -initrd o.cpio.gz -append "console=ttyS0 panic=-1 quiet" | tr -d '\r' > "$W/e2e.log" || true
grep -a -E "G-|NODE-|HAVMS" "$W/e2e.log" | grep -av "G-DMESG\|G-ACPIERR\|G-DSDT" | head -40
log=$W/e2e.log
if [ "${SCENARIO:-io}" = restore ]; then
  a=$(sed -n 's/^NODE-AT-SAVE.*COUNT \([0-9]*\) .*/\1/p' "$log")
  b=$(sed -n 's/^NODE-AFTER COUNT \([0-9]*\) .*/\1/p' "$log" | head -1)
  ok=$(grep -a -c '^NODE-AFTER COUNT [0-9]* disk=ok rng=ok' "$log" || true)
  [ -n "$a" ] && [ -n "$b" ] && [ "$b" -ge "$a" ] && [ "$b" -le $((a + 3)) ] && [ "$ok" -ge 3 ] \
    && grep -aq 'NODE-AFTER COUNT.*net=ok' "$log" && grep -aq 'NODE-REBOOTS 0' "$log" \
    || { echo "FAIL restore: saved at COUNT '$a', continued at '$b', $ok good lines (log $log)"; exit 1; }
  echo "PASS virtio e2e restore: saved at COUNT $a, continued at $b with disk, rng and net working (log $log)"
  exit 0
fi
for want in 'G-VDA-HEAD HELLO-DISK' G-VDA-WRITE-OK 'G-VDA-READBACK GUEST-WROTE-THIS' G-VDA-BULK-OK \
            'G-RNG virtio_rng.0 [0-9a-f]' 'G-MAC 52:54:00:aa:bb:cc' NODE-PING-GUEST-OK G-PING-OK \
            'NODE-VM-EXIT rc=0' 'NODE-DISK GUEST-WROTE-THIS'; do
  grep -aq "$want" "$log" || { echo "FAIL: missing '$want' (log $log)"; exit 1; }
done
echo "PASS virtio e2e (log $log)"
