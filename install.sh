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

usage() {
  cat <<'EOF'
Usage: ./install.sh [options]

Sets up OpenPCC on this machine and starts the appliance. On a host without AMD SEV-SNP or
Intel TDX it sets up the SIMULATED appliance, which is NOT CONFIDENTIAL, and says so.

  --dev          also install the development tools and the OS packages the tests use
  --no-start     set up and provision, but do not start the appliance
  --no-engine    skip the embedded CPU engine (llama-cpp-python + Gemma 3 270M)
  --port N       gateway port (default 8480, or $OPENPCC_PORT)
  --yes          answer yes to questions (unattended)
  --uninstall    stop the appliance (state is kept; add --purge to delete it)
  --purge        with --uninstall: also delete the state directory and the client's trust store
  -h, --help     this help

Afterwards:  .venv/bin/openpcc ask "The capital of France is"
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dev) DEV=1 ;;
    --no-start) START=0 ;;
    --no-engine) ENGINE=0 ;;
    --port) shift; PORT="${1:?--port needs a number}" ;;
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

if [ "$ENGINE" = 1 ]; then
  step "Embedded CPU engine (llama-cpp-python, Gemma 3 270M); the first build takes a few minutes"
  "$VENV/bin/python" -m appliance.engine_install || die "the CPU engine could not be installed" \
    "re-run with --no-engine to skip it, or see the build output above"
fi

step "Host"
"$VENV/bin/openpcc-appliance" doctor || true
mode="$("$VENV/bin/python" -c 'from appliance.doctor import detect_host; print(detect_host().tee or "simulated")')"
if [ "$mode" != "simulated" ]; then
  warn "this host supports $mode. Launching the real CVM needs a release recipe with the operator's"
  warn "firmware, kernel and image (see README, 'On a TEE host'); setting up the simulated appliance now."
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
