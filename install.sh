#!/usr/bin/env bash
# OpenPCC installer: sets up the environment, checks the host, provisions and starts the appliance.
# Safe to run again: every step checks what is already there first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
DEV=0
START=1
ENGINE=1
UNINSTALL=0
PURGE=0
YES=0
PORT="${OPENPCC_PORT:-8480}"
RECIPE=""
# Test hooks: for tests only (see --help). Empty on a real host.
HOST_ROOT="${OPENPCC_TEST_HOST_ROOT:-/}"
APT="${OPENPCC_TEST_APT:-apt-get}"
SKIP_VENV="${OPENPCC_TEST_SKIP_VENV:-0}"

usage() {
  cat <<'EOF'
Usage: ./install.sh [options]

Sets up OpenPCC on this machine and starts the appliance. On a host without AMD SEV-SNP or
Intel TDX it sets up the SIMULATED appliance, which is NOT CONFIDENTIAL, and says so.

On an AMD SEV-SNP (or Intel TDX) host, --recipe launches a release as the confidential VM: the
doctor checks the host, the OS packages it needs are installed (after asking), the GPU's binding
to vfio-pci (now, and from boot on through /etc/modprobe.d) and kernel parameters are changed
only after asking, then the release is measured, appended to the transparency log, written with
its inclusion proof to a read-only provisioning disk and started as the systemd unit
openpcc-cvm.service; install.sh succeeds only once the CVM's attestation verifies as a client
would verify it. On failure it stops at the failing step and prints the doctor's line for it.

  --recipe FILE  TEE host: the release recipe (TOML) to launch as the confidential VM
  --dev          also install the development tools and the OS packages the tests use
  --no-start     set up and provision, but do not start the appliance
  --no-engine    skip the embedded CPU engine (llama-cpp-python + Gemma 3 270M)
  --port N       gateway port (default 8480, or $OPENPCC_PORT)
  --yes          answer yes to questions (unattended; still prints each change it makes)
  --uninstall    stop the appliance (state is kept; add --purge to delete it)
  --purge        with --uninstall: also delete the state directory and the client's trust store
  -h, --help     this help

Environment:
  OPENPCC_STATE_DIR         state directory (default ~/.local/state/openpcc)
  OPENPCC_GPU_ADMIN_TOOLS   NVIDIA gpu-admin-tools' nvidia_gpu_tools.py (reads the GPU CC mode)
  OPENPCC_MODEL_DISK_GIB    disk the model and images need (default 80)

Test hooks (used only by the tests; never set them on a real host):
  OPENPCC_TEST_HOST_ROOT        read sysfs, procfs and /dev under this fake tree
  OPENPCC_TEST_QEMU             the QEMU binary (a recording stub)
  OPENPCC_TEST_SYSTEMCTL        systemctl (a recording stub)
  OPENPCC_TEST_UNIT_DIR         write the unit here instead of /etc/systemd/system
  OPENPCC_TEST_APT              apt-get (a recording stub)
  OPENPCC_TEST_JOURNALCTL       journalctl (a recording stub)
  OPENPCC_TEST_SIMULATION_ROOT  accept SIMULATED evidence signed by this root when verifying
  OPENPCC_TEST_SKIP_VENV=1      use .venv as it is: no venv creation, no pip

Afterwards:  .venv/bin/openpcc ask "The capital of France is"
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dev) DEV=1 ;;
    --no-start) START=0 ;;
    --no-engine) ENGINE=0 ;;
    --port) shift; PORT="${1:?--port needs a number}" ;;
    --recipe) shift; RECIPE="${1:?--recipe needs a file}" ;;
    --yes|-y) YES=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -t 1 ]; then B=$'\e[1m'; R=$'\e[1;31m'; G=$'\e[1;32m'; Y=$'\e[1;33m'; N=$'\e[0m'; else B=; R=; G=; Y=; N=; fi
step() { printf '%s==>%s %s\n' "$B" "$N" "$*"; }
ok() { printf '    %sok%s %s\n' "$G" "$N" "$*"; }
warn() { printf '    %swarn%s %s\n' "$Y" "$N" "$*"; }
die() { printf '%serror:%s %s\n' "$R" "$N" "$1" >&2; [ -n "${2:-}" ] && printf 'hint: %s\n' "$2" >&2; exit 1; }
# Long steps print a dot every few seconds so a quiet build is not mistaken for a hang.
with_progress() {
  local label="$1"; shift
  local log; log="$(mktemp)"
  local start=$SECONDS
  "$@" >"$log" 2>&1 &
  local pid=$!
  printf '    %s ' "$label"
  while kill -0 "$pid" 2>/dev/null; do printf '.'; sleep 3; done
  if wait "$pid"; then
    printf ' done (%ss)\n' "$((SECONDS - start))"; rm -f "$log"
  else
    printf ' FAILED\n'; tail -n 30 "$log" >&2; rm -f "$log"; return 1
  fi
}

# -- TEE host (--recipe) ---------------------------------------------------------------------------
# Reads one doctor report (JSON on stdin) and prints what QUERY asks for.
DOCTOR_QUERY='
import json, sys
report, query = json.load(sys.stdin), sys.argv[1]
checks = report["checks"]
def line(c):
    text = "%s %s: %s" % (c["status"].upper(), c["name"], c["detail"])
    return text + (" (fix: %s)" % c["fix"] if c["fix"] else "")
if query == "tee":
    print(report["tee"] or "none")
elif query == "lines":
    for c in checks:
        print("    " + line(c))
elif query == "failing":
    for c in checks:
        if c["status"] == "fail":
            print("doctor: " + line(c))
elif query.startswith("check:"):
    for c in checks:
        if c["name"] == query[6:]:
            print("doctor: " + line(c))
elif query.startswith("remedy:"):
    kind = query[7:] + ":"
    found = [c["remedy"][len(kind):] for c in checks
             if c.get("remedy", "").startswith(kind) and c["status"] in ("fail", "warn")]
    print(" ".join(dict.fromkeys(" ".join(found).split())))
'
dq() { "$VENV/bin/python" -c "$DOCTOR_QUERY" "$1"; }
doctor_json() {
  "$VENV/bin/openpcc-appliance" doctor --json --root "$HOST_ROOT" --recipe "$RECIPE" || true
}
confirm() {
  if [ "$YES" = 1 ]; then printf '    %s yes (--yes)\n' "$1"; return 0; fi
  local answer=""
  printf '    %s [y/N] ' "$1"
  read -r answer || answer=""
  case "$answer" in y|Y|yes|Yes|YES) return 0 ;; *) return 1 ;; esac
}
# stop_at STEP REPORT [CHECK NAME]: stop at a failing step with the doctor's line(s) for it.
stop_at() {
  printf '%serror:%s stopped at step: %s\n' "$R" "$N" "$1" >&2
  if [ -n "${3:-}" ]; then printf '%s\n' "$2" | dq "check:$3" >&2
  else printf '%s\n' "$2" | dq failing >&2; fi
  exit 1
}
run_apt() {
  if [ "$APT" = apt-get ] && [ "$(id -u)" != 0 ]; then
    sudo DEBIAN_FRONTEND=noninteractive apt-get "$@"
  else
    DEBIAN_FRONTEND=noninteractive "$APT" "$@"
  fi
}
bind_vfio() {
  local bdf="$1" dev="${HOST_ROOT%/}/sys/bus/pci/devices/$1"
  if [ "$HOST_ROOT" = / ]; then
    modprobe vfio-pci || die "modprobe vfio-pci failed" "is vfio-pci built for this kernel?"
  fi
  printf 'vfio-pci' > "$dev/driver_override"
  if [ -e "$dev/driver" ]; then printf '%s' "$bdf" > "$dev/driver/unbind"; fi
  printf '%s' "$bdf" > "${HOST_ROOT%/}/sys/bus/pci/drivers_probe"
  ok "GPU $bdf: driver_override=vfio-pci, unbound from its driver, reprobed"
}
add_kernel_args() {
  local grub="${HOST_ROOT%/}/etc/default/grub"
  [ -f "$grub" ] || die "no $grub: add '$1' to the kernel command line with your boot loader's tool" \
    "then reboot and run ./install.sh --recipe $RECIPE again"
  local before after over
  before="$(cat "$grub")"
  sed -i "s|^GRUB_CMDLINE_LINUX_DEFAULT=\"\\(.*\\)\"|GRUB_CMDLINE_LINUX_DEFAULT=\"\\1 $1\"|" "$grub"
  after="$(cat "$grub")"
  # The edit only works on a double-quoted GRUB_CMDLINE_LINUX_DEFAULT line: say so, never "ok".
  if [ "$before" = "$after" ] || ! grep -qF " $1\"" <(grep '^GRUB_CMDLINE_LINUX_DEFAULT="' "$grub"); then
    die "could not add '$1' to $grub (no GRUB_CMDLINE_LINUX_DEFAULT=\"...\" line to edit)" \
      "add '$1' to the kernel command line by hand, update-grub, reboot, run ./install.sh --recipe $RECIPE again"
  fi
  for over in "${HOST_ROOT%/}"/etc/default/grub.d/*.cfg; do
    if [ -f "$over" ] && grep -q '^GRUB_CMDLINE_LINUX_DEFAULT=' "$over"; then
      warn "$over also sets GRUB_CMDLINE_LINUX_DEFAULT and is read after $grub: add '$1' there too"
    fi
  done
  if [ "$HOST_ROOT" = / ]; then update-grub; fi
  ok "added '$1' to $grub"
}

tee_install() {
  local app="$VENV/bin/openpcc-appliance" report tee pkgs args bdf ids changed=0
  [ -f "$RECIPE" ] || die "no recipe at $RECIPE" "pass the release recipe TOML with --recipe"
  step "Host check (doctor)"
  report="$(doctor_json)"
  [ -n "$report" ] || die "the doctor did not run" "run '$app doctor --recipe $RECIPE' to see why"
  printf '%s\n' "$report" | dq lines
  tee="$(printf '%s\n' "$report" | dq tee)"
  [ "$tee" != none ] || die "--recipe needs an AMD SEV-SNP or Intel TDX host; this one has neither" \
    "run ./install.sh without --recipe for the SIMULATED appliance"
  ok "this host supports $tee"

  step "OS packages"
  pkgs="$(printf '%s\n' "$report" | dq remedy:apt)"
  if [ -z "$pkgs" ]; then
    ok "nothing to install"
  else
    printf '    needed: %s\n' "$pkgs"
    if confirm "Install them with $APT?"; then
      # shellcheck disable=SC2086
      { run_apt update -qq && run_apt install -y -qq --no-install-recommends $pkgs; } \
        || die "installing $pkgs failed" "install them with your package manager, then run ./install.sh again"
      ok "installed $pkgs"
      report="$(doctor_json)"
    else
      warn "not installed: $pkgs"
    fi
  fi

  step "Host changes (each asked first): GPU binding, kernel parameters"
  for bdf in $(printf '%s\n' "$report" | dq remedy:vfio); do
    if confirm "Bind GPU $bdf to vfio-pci? It leaves its host driver until the next reboot."; then
      bind_vfio "$bdf"
      changed=1
    else
      stop_at "host changes (GPU $bdf stays on its driver)" "$report" "GPU $bdf binding"
    fi
  done
  [ "$changed" = 0 ] || report="$(doctor_json)"
  ids="$(printf '%s\n' "$report" | dq remedy:vfio-persist)"
  if [ -n "$ids" ]; then
    local where=""
    [ "$HOST_ROOT" = / ] || where=" under $HOST_ROOT"
    printf '    GPUs %s are on vfio-pci until the next reboot only\n' "$ids"
    if confirm "Keep them on vfio-pci from boot? Writes /etc/modprobe.d/openpcc-vfio.conf and /etc/modules-load.d/openpcc-vfio.conf$where, then runs update-initramfs -u."; then
      "$app" persist-vfio --yes --root "$HOST_ROOT" | sed 's/^/    /' \
        || die "writing the vfio-pci configuration failed" "run '$app persist-vfio' as root"
      if [ "$HOST_ROOT" = / ] && command -v update-initramfs >/dev/null; then update-initramfs -u; fi
      changed=1
    else
      warn "the GPUs return to their host driver at the next reboot (run '$app persist-vfio' later)"
    fi
  fi
  args="$(printf '%s\n' "$report" | dq remedy:kernel-cmdline)"
  if [ -n "$args" ]; then
    if confirm "Add '$args' to the kernel command line (GRUB)? The host must reboot afterwards."; then
      add_kernel_args "$args"
      printf '\nReboot, then run ./install.sh --recipe %s again.\n' "$RECIPE"
      exit 0
    fi
    stop_at "host changes (kernel parameters unchanged)" "$report"
  fi
  [ "$changed" = 1 ] || ok "nothing to change"
  report="$(doctor_json)"
  if [ -n "$(printf '%s\n' "$report" | dq failing)" ]; then stop_at "host check" "$report"; fi
  ok "every requirement passes"

  step "Provisioning the $tee appliance: measure, release to the transparency log, write the unit"
  "$app" provision --recipe "$RECIPE" --port "$PORT" || die "provisioning failed" \
    "'$app doctor --recipe $RECIPE' and '$app measure $RECIPE' show why"

  local state
  state="$("$VENV/bin/python" -c 'from appliance.state import state_dir; print(state_dir())')"
  step "Trusting this appliance's log key (for this user's client)"
  "$VENV/bin/openpcc" trust --log-key "$(cat "$state/log/log.vkey")" >/dev/null
  ok "trust store: ${OPENPCC_CONFIG_DIR:-${XDG_CONFIG_HOME:-$HOME/.config}/openpcc}"

  local url="http://127.0.0.1:$PORT"
  if [ "$START" = 1 ]; then
    step "Starting the CVM (systemd unit openpcc-cvm.service) and verifying its attestation"
    "$app" up --timeout "${OPENPCC_UP_TIMEOUT:-900}" || die "the CVM did not start or did not verify" \
      "'$app logs' shows the CVM's serial console and the unit's journal"
  fi

  printf '\n%sSummary%s\n' "$B" "$N"
  printf '  mode:     %s confidential VM (unit openpcc-cvm.service)\n' "$tee"
  if [ -n "${OPENPCC_TEST_SIMULATION_ROOT:-}" ]; then
    printf '  %sTEST HOOK: the verified evidence was SIMULATED — NOT CONFIDENTIAL%s\n' "$R" "$N"
  fi
  printf '  state:    %s\n' "$state"
  printf '  gateway:  %s\n\n' "$url"
  if [ "$START" = 1 ]; then
    printf 'Verify it yourself: %s/bin/openpcc verify %s\n' "$VENV" "$url"
    printf 'Chat:               %s/bin/openpcc chat --url %s\n' "$VENV" "$url"
    printf 'Dashboard:          %s/bin/openpcc-appliance dashboard --url %s\n' "$VENV" "$url"
    printf 'Status / stop:      %s/bin/openpcc-appliance status | down\n' "$VENV"
  else
    printf '  not started (--no-start); start with: %s/bin/openpcc-appliance up\n' "$VENV"
  fi
}

if [ "$UNINSTALL" = 1 ]; then
  step "Stopping the appliance"
  if [ -x "$VENV/bin/openpcc-appliance" ]; then "$VENV/bin/openpcc-appliance" down || true; fi
  if [ "$PURGE" = 1 ]; then
    state="${OPENPCC_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/openpcc}"
    conf="${OPENPCC_CONFIG_DIR:-${XDG_CONFIG_HOME:-$HOME/.config}/openpcc}"
    rm -rf "$state" "$conf"
    ok "removed $state and $conf"
  fi
  exit 0
fi

step "Python environment"
if [ "$SKIP_VENV" = 1 ]; then
  [ -x "$VENV/bin/openpcc-appliance" ] || die "test hook OPENPCC_TEST_SKIP_VENV: $VENV is not installed"
  warn "test hook OPENPCC_TEST_SKIP_VENV: using $VENV as it is"
else
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "Python >= 3.11 is needed (found $("$PY" --version 2>&1))" "set PYTHON=/path/to/python3.11"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || die "could not create $VENV" "install your distribution's python3-venv"
  ok "created $VENV"
else
  ok "$VENV exists"
fi
with_progress "upgrading pip" "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24"
extras=""
[ "$DEV" = 1 ] && extras="[dev]"
with_progress "installing openpcc$extras" "$VENV/bin/python" -m pip install --quiet -e "$ROOT$extras"
fi

if [ "$DEV" = 1 ]; then
  step "OS packages the tests use (ovmf, cryptsetup-bin, qemu-system-x86, squashfs-tools)"
  need=()
  [ -f /usr/share/OVMF/OVMF_CODE.fd ] || need+=(ovmf)
  command -v veritysetup >/dev/null || need+=(cryptsetup-bin)
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  command -v mksquashfs >/dev/null || need+=(squashfs-tools)
  if [ ${#need[@]} -eq 0 ]; then
    ok "all present"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    with_progress "apt-get install ${need[*]}" bash -c \
      "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${need[*]}"
  else
    warn "missing ${need[*]}: the tests that need them will fail; install them with your package manager"
  fi
fi

# A TEE host runs the engine inside the CVM: the CPU engine is for the simulated appliance only.
if [ "$ENGINE" = 1 ] && [ -z "$RECIPE" ]; then
  step "Embedded CPU engine (llama-cpp-python, Gemma 3 270M); the first build takes a few minutes"
  "$VENV/bin/python" -m appliance.engine_install || die "the CPU engine could not be installed" \
    "re-run with --no-engine to skip it, or see the build output above"
fi

if [ -n "$RECIPE" ]; then
  tee_install
  exit 0
fi

step "Host"
"$VENV/bin/openpcc-appliance" doctor || true
mode="$("$VENV/bin/python" -c 'import sys; from pathlib import Path; from appliance.doctor import detect_host; print(detect_host(Path(sys.argv[1])).tee or "simulated")' "$HOST_ROOT")"
if [ "$mode" != "simulated" ]; then
  warn "this host supports $mode. Launching the real CVM needs a release recipe with the operator's"
  warn "firmware, kernel and image: re-run with --recipe FILE (see README, 'On a TEE host');"
  warn "setting up the simulated appliance now."
fi
printf '\n%s  !! SIMULATED — NOT CONFIDENTIAL !!%s\n' "$R" "$N"
printf '  No TEE is used: the host can read every prompt. The evidence is signed by a chain made here.\n\n'

step "Provisioning the simulated appliance"
engine_kind=embedded
[ "$ENGINE" = 1 ] || engine_kind=none
if [ "$engine_kind" = none ]; then
  warn "no engine installed (--no-engine): provisioning only, the appliance cannot answer"
  START=0
else
  "$VENV/bin/openpcc-appliance" provision --port "$PORT" --engine embedded
fi

state="$("$VENV/bin/python" -c 'from appliance.state import state_dir; print(state_dir())')"
if [ -f "$state/sim/trust-simulated.pem" ]; then
  step "Trusting this appliance's simulation root and log key (for this user's client)"
  "$VENV/bin/openpcc" trust --simulated "$state/sim/trust-simulated.pem" \
    --log-key "$(cat "$state/log/log.vkey")" >/dev/null
  ok "trust store: ${OPENPCC_CONFIG_DIR:-${XDG_CONFIG_HOME:-$HOME/.config}/openpcc}"
fi

if [ "$START" = 1 ]; then
  step "Starting the appliance and verifying its attestation"
  "$VENV/bin/openpcc-appliance" up || die "the appliance did not start" \
    "see '$VENV/bin/openpcc-appliance logs'"
fi

printf '\n%sSummary%s\n' "$B" "$N"
printf '  mode:     %sSIMULATED — NOT CONFIDENTIAL%s\n' "$R" "$N"
printf '  state:    %s\n' "$state"
if [ "$START" = 1 ]; then
  printf '  gateway:  http://127.0.0.1:%s\n\n' "$PORT"
  printf 'Ask a question:   %s/bin/openpcc ask "The capital of France is"\n' "$VENV"
  printf 'Chat:             %s/bin/openpcc chat\n' "$VENV"
  printf 'Status / stop:    %s/bin/openpcc-appliance status | down\n' "$VENV"
else
  printf '  not started (--no-start or --no-engine); start with: %s/bin/openpcc-appliance up\n' "$VENV"
fi
