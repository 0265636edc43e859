#!/bin/busybox sh
# OpenPCC initramfs init. It runs from the initramfs only (busybox is not in the root filesystem):
# load the boot modules, open the dm-verity volumes against the root hashes on the measured kernel
# command line, mount them read-only, bring up the network, then switch_root into the sealed root,
# whose PID 1 is the Python supervisor. Any failure powers the VM off: there is no rescue shell.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin DM_DISABLE_UDEV=1 LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu

die() {
    echo "openpcc-init: FATAL: $*" > /dev/console
    sleep 1
    poweroff -f
}

mkdir -p /proc /sys /dev /run /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "openpcc-init: $(cut -d' ' -f1 /proc/uptime)s loading modules" > /dev/console
while read -r ko; do
    insmod "/lib/modules/$ko" || die "insmod $ko"
done < /lib/modules/load.order

ROOT_HASH=""
WEIGHTS_HASH=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        roothash=*) ROOT_HASH="${arg#roothash=}" ;;
        openpcc.weights_roothash=*) WEIGHTS_HASH="${arg#openpcc.weights_roothash=}" ;;
    esac
done
[ ${#ROOT_HASH} -eq 64 ] || die "no roothash= on the kernel command line"
[ ${#WEIGHTS_HASH} -eq 64 ] || die "no openpcc.weights_roothash= on the kernel command line"

# virtio-blk disks are found by serial, never by probe order (the host picks the order).
disk() {
    tries=0
    while [ $tries -lt 100 ]; do
        for b in /sys/block/vd*; do
            [ -e "$b/serial" ] || continue
            if [ "$(cat "$b/serial")" = "$1" ]; then
                echo "/dev/${b##*/}"
                return 0
            fi
        done
        tries=$((tries + 1))
        sleep 0.1
    done
    return 1
}

open_verity() {  # name data-serial hash-serial root-hash mountpoint
    data=$(disk "$2") || die "no disk with serial $2"
    hash=$(disk "$3") || die "no disk with serial $3"
    veritysetup open "$data" "$1" "$hash" "$4" || die "dm-verity refused $2 (root hash $4)"
    mkdir -p "$5"
    mount -t squashfs -o ro,nodev "/dev/mapper/$1" "$5" || die "cannot mount $1"
}

echo "openpcc-init: $(cut -d' ' -f1 /proc/uptime)s opening dm-verity volumes" > /dev/console
open_verity root openpcc-root openpcc-root-hash "$ROOT_HASH" /newroot
open_verity weights openpcc-weights openpcc-weights-hash "$WEIGHTS_HASH" /newroot/weights

# The provisioning disk is not measured and holds only what the client verifies itself (the
# release manifest, the log) or, in simulation, the simulated evidence keys. Nothing under /run
# is ever executed: the supervisor copies only allowed plain files from the disk to it.
mount -t tmpfs -o mode=0755,nosuid,nodev,noexec run /newroot/run
mkdir -p /newroot/run/openpcc/provision
if cfg=$(disk openpcc-provision); then
    mount -t squashfs -o ro,nodev,nosuid,noexec "$cfg" /newroot/run/openpcc/provision \
        || die "cannot mount the provisioning disk"
fi
mount -t tmpfs -o mode=1777,nosuid,nodev tmp /newroot/tmp

ip link set lo up
ip link set eth0 up || die "no network card"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
echo "openpcc-init: $(cut -d' ' -f1 /newroot/proc/uptime)s switching to the sealed root" > /newroot/dev/console
exec switch_root /newroot /usr/bin/python3.11 -I -B /usr/lib/openpcc/supervise.py
