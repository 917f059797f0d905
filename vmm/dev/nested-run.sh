#!/usr/bin/env bash
# Runs havms-vm one level down, the only place it can run on the build machines (their /dev/kvm
# is kvm_pvm, which hangs ordinary guests): a QEMU TCG node (-cpu max: AMD SVM with nested
# paging) boots a busybox initramfs, loads kvm + kvm-amd, and runs a scenario with our engine.
# Same recipe as /work/shared/probes/nested-kvm.sh, with havms-vm instead of QEMU inside.
#
# Usage: vmm/dev/nested-run.sh [SCENARIO] [WORKDIR]
#   boot     guest prints HAVMS-GUEST-UP and powers off; havms-vm must exit 0   (default)
#            (--no-reboot: with GUEST_END='reboot -f' or a guest panic the VM ends too)
#   smp      same with --cpus boot=2; the guest must see 2 CPUs
#   reboot   guest prints HAVMS-GUEST-UP then `reboot -f`: havms-vm reboots it in place; the
#            serial file shows HAVMS-GUEST-UP at least twice, `havms-remote info` boots >= 2,
#            then `havms-remote shutdown` ends it with exit 0; a snapshot taken after the reboot
#            restores, and the restored VM reboots too (from the spec in its state.json)
#   restore  counter guest; pause, snapshot, shutdown, restore in a new process; the counter
#            must continue from where it was (no reboot)
#   increments  counter guest with --dirty-log: full snapshot, then increments while it runs
#            (the pause each needs is printed), then at one paused instant an increment and a full
#            snapshot; base + increments must hash like the full one, and the chain must restore
#   devices  virtio-blk (reads a marker from the image, writes one back), virtio-rng, virtio-net
#            on a tap (the guest pings the node), then power off (--no-reboot: a panic ends it)
#   devices-restore  the devices guest pings the node and reads its disk in a loop; pause,
#            snapshot, shutdown, restore (tap re-created): the loop goes on, pings still answer
#   gating   the pinging guest with the NIC's output gate on: requests are held (pings fail,
#            frames wait), `commit` releases them, gate off lets pings through again
#   qemu     the probe's QEMU on the same guest, for timing comparison
# Needs: qemu-system-x86 busybox-static cpio, and a Debian kernel (default: the one `cargo xtask image` caches in target/havms/cache)
# (or a k/ in WORKDIR as nested-kvm.sh makes). Builds havms-vm statically first
# (CARGO_TARGET_DIR=/work/main/target/dev-vmm unless set). Output: the node's console lines that
# matter, then PASS/FAIL; exit status 0 on PASS.
set -euo pipefail
SCEN=${1:-boot}
W=${2:-/tmp/havms-nested}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/dev-vmm}
mkdir -p "$W"; cd "$W"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
     --target x86_64-unknown-linux-gnu -p havms-vmm)
fi
BIN=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release

K=${KDIR:-}
# Default: the kernel package `cargo xtask image` fetched into the workspace cache.
CACHED=$(ls -d "$ROOT"/target/havms/cache/root/linux-image-*/ 2>/dev/null | head -1 || true)
[ -z "$K" ] && { [ -d "$W/k" ] && K=$W/k || K=${CACHED:-/tmp/kcheck/k}; }
[ -d "$K/boot" ] || { echo "no Debian kernel at $K (run /work/shared/probes/nested-kvm.sh $W first)" >&2; exit 2; }
KV=$(ls "$K/lib/modules"); M=$K/lib/modules/$KV/kernel; VMLINUZ=$(ls "$K"/boot/vmlinuz-* | head -1)
mk() { (cd "$1" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$2"; }

# --- inner guest -------------------------------------------------------------------------
rm -rf g o; mkdir -p g/bin g/proc g/sys; cp /bin/busybox g/bin/
case $SCEN in
  restore|increments)
    cat > g/init <<'IN'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc p /proc
echo HAVMS-GUEST-UP cpus=$(grep -c ^processor /proc/cpuinfo)
i=0; while true; do i=$((i+1)); echo "COUNT $i up=$(cut -d' ' -f1 /proc/uptime)"; sleep 0.5; done
IN
    ;;
  devices|devices-restore|gating)
    mkdir -p g/mod; VM_=$M/drivers/virtio
    cp $VM_/virtio.ko $VM_/virtio_ring.ko $VM_/virtio_mmio.ko $M/drivers/block/virtio_blk.ko \
       $M/drivers/char/hw_random/virtio-rng.ko $M/net/core/failover.ko $M/drivers/net/net_failover.ko \
       $M/drivers/net/virtio_net.ko g/mod/
    cat > g/init <<'IN'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev
for m in virtio_ring virtio virtio_mmio virtio_blk virtio-rng failover net_failover virtio_net; do insmod /mod/$m.ko || echo "GUEST-INSMOD-FAILED $m"; done
sleep 1
echo HAVMS-GUEST-UP virtio devices: $(ls /sys/bus/virtio/devices | tr '\n' ' ')
echo "DISK-READ: $(head -c 17 /dev/vda)"
echo HAVMS-GUEST-WROTE | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; sync
echo "RNG: $(head -c 8 /dev/hwrng | od -An -tx1)"
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ping -c 2 -W 3 10.0.2.1 >/dev/null && echo GUEST-PING-OK
@LOOP@
poweroff -f
IN
    if [ "$SCEN" != devices ]; then
      sed -i 's|^@LOOP@$|i=0; while true; do i=$((i+1)); p=fail; ping -c 1 -W 1 10.0.2.1 >/dev/null \&\& p=ok; echo "NET $i $p disk=$(head -c 5 /dev/vda) up=$(cut -d" " -f1 /proc/uptime)"; sleep 0.5; done|' g/init
    else
      sed -i '/^@LOOP@$/d' g/init
    fi
    ;;
  *)
    cat > g/init <<'IN'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc p /proc
echo HAVMS-GUEST-UP $(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) up=$(cut -d' ' -f1 /proc/uptime)
@END@
IN
    END=${GUEST_END:-poweroff -f}; [ "$SCEN" = reboot ] && END='reboot -f'
    sed -i "s|@END@|$END|" g/init
    ;;
esac
chmod +x g/init; mk g g.cpio.gz

# --- node --------------------------------------------------------------------------------
mkdir -p o/bin o/proc o/sys o/dev o/tmp o/mod o/inner; cp /bin/busybox o/bin/
cp "$BIN/havms-vm" "$BIN/havms-remote" o/bin/
cp "$M"/virt/lib/irqbypass.ko "$M"/drivers/crypto/ccp/ccp.ko "$M"/arch/x86/kvm/kvm.ko "$M"/arch/x86/kvm/kvm-amd.ko o/mod/ 2>/dev/null || \
cp "$M"/../virt/lib/irqbypass.ko "$M"/drivers/crypto/ccp/ccp.ko "$M"/arch/x86/kvm/kvm.ko "$M"/arch/x86/kvm/kvm-amd.ko o/mod/
cp "$VMLINUZ" o/inner/vmlinuz; cp g.cpio.gz o/inner/
case $SCEN in devices*|gating) cp "$M"/drivers/net/tun.ko o/mod/ ;; esac
if [ "$SCEN" = qemu ]; then
  mkdir -p o/usr/share/qemu
  Q=$(command -v qemu-system-x86_64); cp "$Q" o/bin/
  for l in $(ldd "$Q" | grep -o '/[^ ]*'); do mkdir -p "o$(dirname "$l")"; cp -L "$l" "o$l"; done
  cp -L /usr/share/seabios/bios-256k.bin /usr/share/qemu/kvmvapic.bin /usr/share/qemu/linuxboot_dma.bin o/usr/share/qemu/
fi

VM="havms-vm --kernel /inner/vmlinuz --initramfs /inner/g.cpio.gz --memory size=256M"
CL="console=ttyS0 panic=-1 ${GUEST_CMDLINE:-quiet}"
cat > o/init <<IN
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev; mount -t tmpfs t /tmp
insmod /mod/irqbypass.ko; insmod /mod/ccp.ko; insmod /mod/kvm.ko ignore_msrs=1 report_ignored_msrs=0; insmod /mod/kvm-amd.ko
ls /dev/kvm >/dev/null && echo NODE-KVM-READY
now() { cut -d' ' -f1 /proc/uptime; }
IN
case $SCEN in
  boot|smp)
    CPUS=1; [ "$SCEN" = smp ] && CPUS=2
    cat >> o/init <<IN
t0=\$(now)
RUST_LOG=info $VM --no-reboot --cpus boot=$CPUS --cmdline "$CL" --serial tty --api-socket /tmp/api.sock &
pid=\$!
for i in \$(seq 1 90); do sleep 1; kill -0 \$pid 2>/dev/null || break; done
if kill -0 \$pid 2>/dev/null; then echo NODE-VM-HUNG; havms-remote --api-socket /tmp/api.sock shutdown; sleep 3; fi
wait \$pid
echo "NODE-VM-EXIT rc=\$? start=\$t0 end=\$(now)"
IN
    ;;
  reboot)
    cat >> o/init <<IN
S=/tmp/api.sock; R="havms-remote --api-socket \$S"
RUST_LOG=info $VM --cmdline "$CL" --serial file=/tmp/ser --api-socket \$S 2>/tmp/vm.log &
pid=\$!
for i in \$(seq 1 150); do sleep 1; [ "\$(grep -c HAVMS-GUEST-UP /tmp/ser 2>/dev/null)" -ge 2 ] && break; kill -0 \$pid 2>/dev/null || break; done
echo "guest-up-lines: \$(grep -c HAVMS-GUEST-UP /tmp/ser)"
echo "info-boots: \$(\$R info | sed -n 's/.*"boots": \([0-9]*\).*/\1/p')"
\$R pause >/dev/null; \$R snapshot /tmp/snap | sed 's/^/snapshot after reboot: /'; \$R resume >/dev/null
\$R shutdown | sed 's/^/shutdown: /'
for i in \$(seq 1 20); do sleep 1; kill -0 \$pid 2>/dev/null || break; done
kill -0 \$pid 2>/dev/null && { echo NODE-VM-HUNG; kill \$pid; }
wait \$pid
echo "NODE-VM-EXIT rc=\$?"
grep -E 'rebooting|havms-vm:|error' /tmp/vm.log
# The snapshot taken after a reboot restores, and the restored VM reboots from its spec.
RUST_LOG=info havms-vm --restore /tmp/snap --serial file=/tmp/ser2 --api-socket \$S 2>/tmp/vm2.log &
pid=\$!
for i in \$(seq 1 90); do sleep 1; grep -q 'rebooting (boot 2)' /tmp/vm2.log && grep -q HAVMS-GUEST-UP /tmp/ser2 2>/dev/null && break; kill -0 \$pid 2>/dev/null || break; done
echo "restored-up-lines: \$(grep -c HAVMS-GUEST-UP /tmp/ser2)"
echo "restored-info-boots: \$(\$R info | sed -n 's/.*"boots": \([0-9]*\).*/\1/p')"
\$R shutdown >/dev/null
for i in \$(seq 1 20); do sleep 1; kill -0 \$pid 2>/dev/null || break; done
kill -0 \$pid 2>/dev/null && { echo NODE-VM2-HUNG; kill \$pid; }
wait \$pid
echo "NODE-VM2-EXIT rc=\$?"
grep -E 'rebooting|havms-vm:|error' /tmp/vm2.log
IN
    ;;
  restore)
    cat >> o/init <<IN
S=/tmp/api.sock
RUST_LOG=info $VM --cpus boot=2 --cmdline "console=ttyS0 quiet" --serial file=/tmp/ser1 --api-socket \$S 2>/tmp/vm1.log &
for i in \$(seq 1 60); do sleep 1; grep -q 'COUNT 6 ' /tmp/ser1 2>/dev/null && break; done
echo "before: \$(grep COUNT /tmp/ser1 | tail -1)"
havms-remote --api-socket \$S pause | sed 's/^/pause: /'
havms-remote --api-socket \$S info | tr -d '\n '; echo
t0=\$(now); havms-remote --api-socket \$S snapshot /tmp/snap | sed 's/^/snapshot: /'; echo "snapshot-wall: \$t0 -> \$(now)"
echo "at save: \$(grep COUNT /tmp/ser1 | tail -1)"
ls -l /tmp/snap
havms-remote --api-socket \$S shutdown; sleep 1
echo "vm1 log:"; cat /tmp/vm1.log
RUST_LOG=info havms-vm --restore /tmp/snap --serial file=/tmp/ser2 --api-socket \$S 2>/tmp/vm2.log &
t1=\$(now)
for i in \$(seq 1 60); do sleep 0.5; [ "\$(grep -c COUNT /tmp/ser2 2>/dev/null)" -ge 3 ] && break; done
echo "restore-to-3-lines: \$t1 -> \$(now)"
echo "after restore: \$(grep COUNT /tmp/ser2 | head -1) ... \$(grep COUNT /tmp/ser2 | tail -1)"
echo "ser2 lines: \$(wc -l < /tmp/ser2)"; grep -c HAVMS-GUEST-UP /tmp/ser2 | sed 's/^/reboots-in-ser2: /'
havms-remote --api-socket \$S shutdown; sleep 1
echo "vm2 log:"; cat /tmp/vm2.log
IN
    ;;
  increments)
    cat >> o/init <<IN
S=/tmp/api.sock; R="havms-remote --api-socket \$S"
RUST_LOG=info $VM --cpus boot=2 --dirty-log --cmdline "console=ttyS0 quiet" --serial file=/tmp/ser1 --api-socket \$S 2>/tmp/vm1.log &
for i in \$(seq 1 60); do sleep 1; grep -q 'COUNT 4 ' /tmp/ser1 2>/dev/null && break; done
\$R pause >/dev/null; \$R snapshot /tmp/c0 | sed 's/^/full c0: /'; \$R resume >/dev/null
for n in 1 2 3; do sleep 1; \$R snapshot --incremental /tmp/c\$n | sed "s/^/increment c\$n (running): /"; done
sleep 1; \$R pause >/dev/null
\$R snapshot --incremental /tmp/c4 | sed 's/^/increment c4 (paused): /'
\$R snapshot /tmp/full | sed 's/^/full at the same instant: /'
echo "at save: \$(grep COUNT /tmp/ser1 | tail -1)"
\$R shutdown >/dev/null; sleep 1
du -sk /tmp/c0 /tmp/c1 /tmp/c2 /tmp/c3 /tmp/c4 /tmp/full | tr '\n' ' '; echo
echo "sha-chain: \$(havms-vm --restore /tmp/c4 --memory-sha256)"
echo "sha-full: \$(sha256sum /tmp/full/memory.bin | cut -d' ' -f1)"
RUST_LOG=info havms-vm --restore /tmp/c4 --serial file=/tmp/ser2 --api-socket \$S 2>/tmp/vm2.log &
for i in \$(seq 1 60); do sleep 0.5; [ "\$(grep -c COUNT /tmp/ser2 2>/dev/null)" -ge 3 ] && break; done
echo "after restore: \$(grep COUNT /tmp/ser2 | head -1) ... \$(grep COUNT /tmp/ser2 | tail -1)"
grep -c HAVMS-GUEST-UP /tmp/ser2 | sed 's/^/reboots-in-ser2: /'
\$R shutdown >/dev/null; sleep 1
cat /tmp/vm1.log /tmp/vm2.log | grep -v 'API request'
IN
    ;;
  devices)
    cat >> o/init <<IN
insmod /mod/tun.ko
dd if=/dev/zero of=/tmp/disk.img bs=1M count=8 2>/dev/null
printf HAVMS-DISK-MARKER | dd of=/tmp/disk.img conv=notrunc 2>/dev/null
RUST_LOG=info $VM --no-reboot --cmdline "$CL" --disk path=/tmp/disk.img --net tap=tap0,mac=52:54:00:12:34:56 --rng --serial tty &
pid=\$!
for i in \$(seq 1 30); do sleep 0.5; ip link show tap0 >/dev/null 2>&1 && break; done
ip addr add 10.0.2.1/24 dev tap0; ip link set tap0 up
for i in \$(seq 1 90); do sleep 1; kill -0 \$pid 2>/dev/null || break; done
kill -0 \$pid 2>/dev/null && { echo NODE-VM-HUNG; kill \$pid; }
wait \$pid
echo "NODE-VM-EXIT rc=\$?"
echo "NODE-DISK-AT-4096: \$(dd if=/tmp/disk.img bs=512 skip=8 count=1 2>/dev/null | head -c 17)"
IN
    ;;
  devices-restore)
    cat >> o/init <<IN
insmod /mod/tun.ko
S=/tmp/api.sock; R="havms-remote --api-socket \$S"
dd if=/dev/zero of=/tmp/disk.img bs=1M count=8 2>/dev/null
printf HAVMS-DISK-MARKER | dd of=/tmp/disk.img conv=notrunc 2>/dev/null
tapup() { for i in \$(seq 1 30); do sleep 0.5; ip link show tap0 >/dev/null 2>&1 && break; done; ip link set tap0 address 02:00:00:00:00:01; ip addr add 10.0.2.1/24 dev tap0; ip link set tap0 up; }
RUST_LOG=info $VM --cmdline "console=ttyS0 quiet" --disk path=/tmp/disk.img --net tap=tap0,mac=52:54:00:12:34:56 --rng --serial file=/tmp/ser1 --api-socket \$S 2>/tmp/vm1.log &
tapup
for i in \$(seq 1 90); do sleep 1; grep -q 'NET 4 ' /tmp/ser1 2>/dev/null && break; done
\$R pause >/dev/null; \$R snapshot /tmp/snap | sed 's/^/snapshot: /'
echo "at save: \$(grep NET /tmp/ser1 | tail -1)"
\$R shutdown >/dev/null; sleep 1
RUST_LOG=info havms-vm --restore /tmp/snap --serial file=/tmp/ser2 --api-socket \$S 2>/tmp/vm2.log &
tapup
for i in \$(seq 1 60); do sleep 0.5; [ "\$(grep -c 'NET .* ok' /tmp/ser2 2>/dev/null)" -ge 3 ] && break; done
echo "after restore:"; grep NET /tmp/ser2 | head -5
grep -c HAVMS-GUEST-UP /tmp/ser2 | sed 's/^/reboots-in-ser2: /'
\$R shutdown >/dev/null; sleep 1
cat /tmp/vm1.log /tmp/vm2.log | grep -v 'API request'
IN
    ;;
  gating)
    cat >> o/init <<IN
insmod /mod/tun.ko
S=/tmp/api.sock; R="havms-remote --api-socket \$S"
dd if=/dev/zero of=/tmp/disk.img bs=1M count=8 2>/dev/null
RUST_LOG=info $VM --cmdline "console=ttyS0 quiet" --disk path=/tmp/disk.img --net tap=tap0,mac=52:54:00:12:34:56 --rng --serial file=/tmp/ser1 --api-socket \$S 2>/tmp/vm1.log &
for i in \$(seq 1 30); do sleep 0.5; ip link show tap0 >/dev/null 2>&1 && break; done
ip addr add 10.0.2.1/24 dev tap0; ip link set tap0 up
for i in \$(seq 1 90); do sleep 1; grep -q 'NET 3 ' /tmp/ser1 2>/dev/null && break; done
echo "before gating: \$(grep NET /tmp/ser1 | tail -1)"
\$R gate on; \$R epoch 1; n0=\$(grep -c NET /tmp/ser1)
sleep 4
echo "gated-lines: \$(grep NET /tmp/ser1 | tail -n +\$((n0+1)) | tr '\n' ';')"
echo "gated-info: \$(\$R info | grep -oE '"(waiting|held|passed)_frames": [0-9]+' | tr '\n' ' ')"
\$R commit 1 | sed 's/^/commit: /'
\$R gate off; n1=\$(grep -c NET /tmp/ser1)
sleep 3
echo "open-lines: \$(grep NET /tmp/ser1 | tail -n +\$((n1+1)) | tr '\n' ';')"
echo "open-info: \$(\$R info | grep -oE '"(waiting|released|passed)_frames": [0-9]+' | tr '\n' ' ')"
\$R shutdown >/dev/null; sleep 1
grep -v 'API request' /tmp/vm1.log
IN
    ;;
  qemu)
    cat >> o/init <<IN
t0=\$(now)
timeout 120 qemu-system-x86_64 -enable-kvm -cpu host,pmu=off -m 256 -nodefaults -vga none -display none -serial stdio -net none \
  -L /usr/share/qemu -kernel /inner/vmlinuz -initrd /inner/g.cpio.gz -append "$CL"
echo "NODE-VM-EXIT rc=\$? start=\$t0 end=\$(now)"
IN
    ;;
  *) echo "unknown scenario $SCEN" >&2; exit 2 ;;
esac
echo 'poweroff -f' >> o/init
chmod +x o/init; mk o o.cpio.gz

LOG=$W/$SCEN.log
timeout 400 qemu-system-x86_64 -accel tcg -cpu max -m 2048 -nographic -no-reboot \
  -kernel "$VMLINUZ" -initrd o.cpio.gz -append "console=ttyS0 panic=-1 quiet" | tr -d '\r' > "$LOG" || true
grep -vE '^\s*$' "$LOG" | grep -vE '^\[ *[0-9]+\.[0-9]+\]' | tail -60

ok=0
case $SCEN in
  boot|qemu) grep -q 'HAVMS-GUEST-UP' "$LOG" && grep -q 'NODE-VM-EXIT rc=0' "$LOG" && ok=1 ;;
  smp) grep -q 'HAVMS-GUEST-UP.*cpus=2' "$LOG" && grep -q 'NODE-VM-EXIT rc=0' "$LOG" && ok=1 ;;
  reboot)
    u=$(sed -n 's/^guest-up-lines: //p' "$LOG"); b=$(sed -n 's/^info-boots: //p' "$LOG")
    u2=$(sed -n 's/^restored-up-lines: //p' "$LOG"); b2=$(sed -n 's/^restored-info-boots: //p' "$LOG")
    [ -n "$u" ] && [ "$u" -ge 2 ] && [ -n "$b" ] && [ "$b" -ge 2 ] && grep -q 'NODE-VM-EXIT rc=0' "$LOG" \
      && grep -q 'guest reset: rebooting (boot 2)' "$LOG" && grep -q '^snapshot after reboot: ok' "$LOG" \
      && [ -n "$u2" ] && [ "$u2" -ge 1 ] && [ -n "$b2" ] && [ "$b2" -ge 2 ] && grep -q 'NODE-VM2-EXIT rc=0' "$LOG" && ok=1 ;;
  devices)
    grep -q 'DISK-READ: HAVMS-DISK-MARKER' "$LOG" && grep -q 'NODE-DISK-AT-4096: HAVMS-GUEST-WROTE' "$LOG" \
      && grep -q 'RNG: ..' "$LOG" && grep -q GUEST-PING-OK "$LOG" && grep -q 'NODE-VM-EXIT rc=0' "$LOG" && ok=1 ;;
  gating)
    grep -q '^gated-lines: .*fail' "$LOG" && ! grep -q '^gated-lines: .* ok ' "$LOG" \
      && grep -qE '^gated-info: .*"waiting_frames": [1-9]' "$LOG" && grep -qE '^commit: ok .*[1-9][0-9]* frames released' "$LOG" \
      && grep -q '^open-lines: .* ok ' "$LOG" && ok=1 ;;
  devices-restore)
    a=$(sed -n 's/^at save: NET \([0-9]*\).*/\1/p' "$LOG")
    b=$(grep -E '^NET [0-9]+ ok' "$LOG" | tail -1 | cut -d' ' -f2)
    r=$(sed -n 's/^reboots-in-ser2: //p' "$LOG")
    [ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt "$a" ] && [ "$r" = 0 ] && ok=1 ;;
  increments)
    c1=$(sed -n 's/^sha-chain: //p' "$LOG"); c2=$(sed -n 's/^sha-full: //p' "$LOG")
    a=$(sed -n 's/^at save: COUNT \([0-9]*\).*/\1/p' "$LOG"); b=$(sed -n 's/^after restore: COUNT \([0-9]*\).*/\1/p' "$LOG")
    [ -n "$c1" ] && [ "$c1" = "$c2" ] && [ -n "$a" ] && [ -n "$b" ] && [ "$b" -ge "$a" ] && [ "$b" -le $((a + 3)) ] && ok=1 ;;
  restore)
    a=$(sed -n 's/^at save: COUNT \([0-9]*\).*/\1/p' "$LOG"); b=$(sed -n 's/^after restore: COUNT \([0-9]*\).*/\1/p' "$LOG")
    r=$(sed -n 's/^reboots-in-ser2: //p' "$LOG")
    [ -n "$a" ] && [ -n "$b" ] && [ "$b" -ge "$a" ] && [ "$b" -le $((a + 3)) ] && [ "$r" = 0 ] && ok=1 ;;
esac
if [ $ok = 1 ]; then echo "PASS $SCEN (log $LOG)"; else echo "FAIL $SCEN (log $LOG)"; exit 1; fi
