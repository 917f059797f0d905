# Node-side helpers of the engine scenarios and benchmark (qemu-tests/src/engine/): the harness
# types `. /var/lib/havms/engine/engine.sh` into the node's shell, then short commands built from
# these. Every VM is a NAME: serial output in $W/NAME.ser, engine log in $W/NAME.log, pid of
# havms-vm in $W/NAME.pid, its exit status in $W/NAME.rc once it ended, API socket $W/NAME.sock.
E=/var/lib/havms/engine
W=/tmp/engine
mkdir -p $W
GUEST_CL="console=ttyS0 quiet panic=-1 initcall_blacklist=i8042_init"
now() { cut -d' ' -f1 /proc/uptime; }
# deadline SECONDS: sets $_end to SECONDS from now; past: true once it is reached. The wait
# helpers below poll against the clock, not a count of rounds: on a slow nested node one round
# (a grep, a havms-remote) can take longer than its sleep, and a count of rounds then waits far
# past its SECONDS, so the harness's own timeout fired first and the node's TIMEOUT line, the
# one that says what was missing, never came. Builtins only: polling must not fork to read time.
deadline() { read -r _up _ < /proc/uptime; _end=$(( ${_up%.*} + $1 )); }
past() { read -r _up _ < /proc/uptime; [ ${_up%.*} -ge $_end ]; }
# ser NAME: NAME's serial output without the tty's carriage returns.
ser() { { tr -d '\r' < $W/$1.ser; } 2>/dev/null; }

# run_bg NAME CMD...: CMD in the background; its pid and, when it ends, its status are recorded.
run_bg() {
  n=$1; shift
  rm -f $W/$n.rc $W/$n.pid
  ( "$@" 2>$W/$n.log & echo $! > $W/$n.pid; wait $!; echo $? > $W/$n.rc ) &
  i=0; while [ ! -s $W/$n.pid ] && [ $i -lt 100 ]; do i=$((i+1)); usleep 20000; done
}

# vm_start NAME MODE [havms-vm options]: boots the test guest in MODE (guest-init.sh);
# GUEST_ARGS adds kernel arguments (e.g. pages=N); SERIAL replaces the serial file $W/NAME.ser
# (e.g. SERIAL=socket=$W/NAME.con). A guest reset ends the VM (--no-reboot: a guest whose init
# dies fails the wait helpers at once instead of rebooting forever) unless REBOOT=1.
vm_start() {
  n=$1; m=$2; shift 2
  rm -f $W/$n.ser $W/$n.sock $W/$n.con
  nr=--no-reboot; [ "$REBOOT" = 1 ] && nr=
  run_bg $n env RUST_LOG=info havms-vm --kernel $E/vmlinuz --initramfs $E/guest.cpio.gz \
    --cmdline "$GUEST_CL guest=$m $GUEST_ARGS" --serial ${SERIAL:-file=$W/$n.ser} \
    --api-socket $W/$n.sock $nr "$@"
}

# vm_restore NAME DIR [options]: a new havms-vm process continuing the guest saved in DIR.
vm_restore() {
  n=$1; d=$2; shift 2
  rm -f $W/$n.ser $W/$n.sock $W/$n.con
  nr=--no-reboot; [ "$REBOOT" = 1 ] && nr=
  run_bg $n env RUST_LOG=info havms-vm --restore $d --serial ${SERIAL:-file=$W/$n.ser} \
    --api-socket $W/$n.sock $nr "$@"
}

# vm_replica NAME HOST:PORT [options]: a secondary (havms-vm --replica-listen) waiting for a
# primary's stream; `R NAME takeover` starts the VM it holds.
vm_replica() {
  n=$1; a=$2; shift 2
  rm -f $W/$n.ser $W/$n.sock $W/$n.con
  run_bg $n env RUST_LOG=info havms-vm --replica-listen $a --serial ${SERIAL:-file=$W/$n.ser} \
    --api-socket $W/$n.sock --no-reboot "$@"
}

# wait_info NAME ERE SECONDS: until `R NAME info` matches ERE.
wait_info() {
  deadline $3
  while ! R $1 info 2>/dev/null | grep -qE "$2"; do
    past && { echo "TIMEOUT: no /$2/ in $1's info after $3 s"; R $1 info; return 1; }
    [ -e $W/$1.rc ] && { echo "ENDED: $1 exited $(cat $W/$1.rc)"; return 1; }
    usleep 200000
  done
}

# wait_file FILE ERE N SECONDS: until FILE has N lines matching ERE.
wait_file() {
  deadline $4
  # A file not there yet counts 0 lines (an empty count would end the loop as an error).
  while n=$(grep -cE "$2" $1 2>/dev/null); [ "${n:-0}" -lt $3 ]; do
    past && { echo "TIMEOUT: ${n:-0} of $3 /$2/ lines in $1 after $4 s"; return 1; }
    usleep 100000
  done
}

# R NAME VERB...: havms-remote on VM NAME's socket.
R() { n=$1; shift; havms-remote --api-socket $W/$n.sock "$@"; }

# wait_line NAME ERE SECONDS: until NAME's serial output has a line matching ERE.
wait_line() {
  deadline $3
  while ! ser $1 | grep -qE "$2"; do
    past && { echo "TIMEOUT: no /$2/ in $1's serial after $3 s"; return 1; }
    [ -e $W/$1.rc ] && ! ser $1 | grep -qE "$2" && { echo "ENDED: $1 exited $(cat $W/$1.rc) before /$2/"; return 1; }
    usleep 100000
  done
}

# wait_count NAME ERE N SECONDS: until NAME's serial output has N lines matching ERE.
wait_count() {
  deadline $4
  while n=$(ser $1 | grep -cE "$2"); [ "${n:-0}" -lt $3 ]; do
    past && { echo "TIMEOUT: ${n:-0} of $3 /$2/ lines in $1's serial after $4 s"; return 1; }
    [ -e $W/$1.rc ] && { echo "ENDED: $1 exited $(cat $W/$1.rc) with fewer than $3 /$2/ lines"; return 1; }
    usleep 100000
  done
}

# wait_sock NAME: until the API socket answers.
wait_sock() {
  deadline 30; while ! R $1 info >/dev/null 2>&1; do
    past && { echo "TIMEOUT: $1's API socket after 30 s"; return 1; }
    [ -e $W/$1.rc ] && { echo "ENDED: $1 exited $(cat $W/$1.rc)"; return 1; }
    usleep 200000
  done
}

# wait_exit NAME SECONDS: prints `VM-EXIT NAME rc=N` (rc=timeout after SIGKILL when it hung).
wait_exit() {
  deadline $2
  while [ ! -e $W/$1.rc ] && ! past; do usleep 100000; done
  if [ -e $W/$1.rc ]; then echo "VM-EXIT $1 rc=$(cat $W/$1.rc)"; return 0; fi
  kill -9 $(cat $W/$1.pid) 2>/dev/null; echo "VM-EXIT $1 rc=timeout"; return 1
}

# tap_up TAP: waits for the engine to create TAP, gives the node 10.0.2.1/24 on it. The node's
# end always gets the same MAC, so a guest restored in a new engine process (which creates the
# tap again) still reaches the node through the address in its ARP cache.
tap_up() {
  deadline 10; while ! ip link show $1 >/dev/null 2>&1; do
    past && { echo "TIMEOUT: no $1 after 10 s"; return 1; }; usleep 100000
  done
  ip link set $1 down; ip link set $1 address 02:48:56:00:00:01 &&
    ip addr add 10.0.2.1/24 dev $1 && ip link set $1 up
}

# tap_br TAP: waits for the engine to create TAP and puts it on the node's LAN bridge br0 (the
# guest is then on the LAN, as the supervisor will wire VMs).
tap_br() {
  deadline 10; while ! ip link show $1 >/dev/null 2>&1; do
    past && { echo "TIMEOUT: no $1 after 10 s"; return 1; }; usleep 100000
  done
  ip link set $1 master br0 && ip link set $1 up
}

# last_count NAME: NAME's last complete `COUNT n up=s` line.
last_count() { ser $1 | grep -E '^COUNT [0-9]+ up=[0-9]+\.[0-9]+$' | tail -1; }

# --- the benchmark's baseline: the same guest under QEMU with KVM --------------------------
# The node has no dynamic loader of its own: QEMU runs through the one shipped with its libraries.
QEMU="$E/qemu/lib/ld.so --library-path $E/qemu/lib $E/qemu/bin/qemu-system-x86_64"
QPORT=4444

# qemu_start NAME MODE [QEMU options]: like vm_start; the HMP monitor is on 127.0.0.1:$QPORT.
qemu_start() {
  n=$1; m=$2; shift 2
  rm -f $W/$n.ser
  run_bg $n $QEMU -enable-kvm -cpu host,pmu=off -smp 1 -m ${QMEM:-256} -nodefaults -vga none \
    -display none -no-reboot -net none -L $E/qemu/share -kernel $E/vmlinuz \
    -initrd $E/guest.cpio.gz -append "$GUEST_CL guest=$m $GUEST_ARGS" -serial file:$W/$n.ser \
    -monitor tcp:127.0.0.1:$QPORT,server=on,wait=off "$@"
}

# hmp CMD: one monitor command; prints its answer.
hmp() { (echo "$1"; usleep 300000) | nc 127.0.0.1 $QPORT | tr -d '\r' | grep -v '^QEMU .* monitor' | sed 's/^(qemu) //'; }
