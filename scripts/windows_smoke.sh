#!/usr/bin/env bash
# Windows smoke test: cross-builds smarthost.exe (x86_64-pc-windows-gnu, without legacy-tls), runs
# `smarthost.exe serve` under Wine with a drop route, sends one message over SMTP and waits for the
# .eml file in the drop folder. Prints PASS or FAIL; exits non-zero on failure.
#
# Needs (installed when missing): mingw-w64 and wine64 (apt), the rust target (rustup), python3.
# Environment: SMOKE_TIMEOUT (seconds for the whole test after the build, default 240),
#              SMOKE_KEEP=1 keeps the temporary directory.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=x86_64-pc-windows-gnu
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-240}

fail() {
    echo "FAIL: $*" >&2
    if [[ -n "${WORK:-}" && -f "${WORK}/serve.log" ]]; then
        echo "--- last lines of smarthost.exe's output ---" >&2
        tail -n 30 "${WORK}/serve.log" >&2 || true
    fi
    exit 1
}

# --- tools -----------------------------------------------------------------------------------
need_apt=()
command -v x86_64-w64-mingw32-gcc >/dev/null || need_apt+=(mingw-w64)
if ! command -v wine64 >/dev/null && [[ ! -x /usr/lib/wine/wine64 ]]; then
    need_apt+=(wine64)
fi
if ((${#need_apt[@]})); then
    echo "installing ${need_apt[*]} (apt)"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}" \
        || { $SUDO apt-get update && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}"; } \
        || fail "cannot install ${need_apt[*]}"
fi
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET" || fail "rustup target add $TARGET"

if command -v wine64 >/dev/null; then
    WINE=$(command -v wine64)
elif [[ -x /usr/lib/wine/wine64 ]]; then
    WINE=/usr/lib/wine/wine64 # Debian 12's wine64 package: no wine64 on PATH
else
    fail "no wine64 after installing it"
fi

# --- build -----------------------------------------------------------------------------------
echo "building smarthost.exe"
build_start=$SECONDS
cargo build --release --target "$TARGET" --no-default-features || fail "the Windows build failed"
echo "built in $((SECONDS - build_start)) s"
EXE="$ROOT/target/$TARGET/release/smarthost.exe"

# --- the test --------------------------------------------------------------------------------
DEADLINE=$((SECONDS + SMOKE_TIMEOUT))
remaining() { local r=$((DEADLINE - SECONDS)); ((r > 0)) && echo "$r" || echo 1; }

WORK=$(mktemp -d /tmp/smarthost-windows-smoke.XXXXXX)
export WINEPREFIX="$WORK/wineprefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" WINEARCH=win64
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    # Only this test's prefix: its wineserver and the processes in it.
    if [[ -d "$WINEPREFIX" ]]; then
        timeout 20 wineserver -k 2>/dev/null || true
    fi
    if [[ "${SMOKE_KEEP:-0}" != 1 ]]; then
        rm -rf "$WORK"
    else
        echo "kept $WORK"
    fi
}
trap cleanup EXIT

cp "$EXE" "$WORK/"

# Rust's std (1.78+) imports ProcessPrng from bcryptprimitives.dll, which Wine gained only in 9.x.
# For older Wine (Debian 12 has 8.0), a stand-in DLL next to the .exe provides it. Real Windows
# (10 and later) has the DLL; the stand-in is only for this test.
wine_major=$("$WINE" --version 2>/dev/null | sed -n 's/^wine-\([0-9]*\).*/\1/p')
if [[ -n "$wine_major" && "$wine_major" -lt 9 ]]; then
    echo "wine $wine_major: adding a bcryptprimitives.dll stand-in (ProcessPrng)"
    cat >"$WORK/bcryptprimitives.c" <<'EOF'
#include <windows.h>
#include <bcrypt.h>
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0) return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
EOF
    x86_64-w64-mingw32-gcc -shared -O2 -o "$WORK/bcryptprimitives.dll" "$WORK/bcryptprimitives.c" \
        -lbcrypt -Wl,--kill-at || fail "cannot build the bcryptprimitives.dll stand-in"
fi

echo "creating the Wine prefix (the first start takes a while)"
cd "$WORK"
version=$(timeout "$(remaining)" "$WINE" ./smarthost.exe --version 2>"$WORK/version.err" | tr -d '\r') \
    || { cat "$WORK/version.err" >&2; fail "smarthost.exe --version did not run under Wine"; }
echo "under Wine: $version"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SVC_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Relative paths: taken relative to the current directory, $WORK (Z:\tmp\... under Wine).
cat >"$WORK/smarthost.toml" <<EOF
data_dir = "data"
hostname = "smoke.example.com"

[[listener]]
address = "127.0.0.1:$PORT"
relay_from = ["127.0.0.1"]

[[route]]
name = "drop"
domains = ["*"]
transport = "drop"
path = "outbox"
EOF

"$WINE" ./smarthost.exe serve --config smarthost.toml >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!

echo "waiting for 127.0.0.1:$PORT"
until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 1).close()" 2>/dev/null; do
    kill -0 "$SERVER_PID" 2>/dev/null || fail "smarthost.exe serve exited"
    ((SECONDS < DEADLINE)) || fail "smarthost.exe did not listen on 127.0.0.1:$PORT in time"
    sleep 1
done

echo "sending one message"
timeout "$(remaining)" python3 - "$PORT" <<'EOF' || fail "SMTP transaction failed"
import smtplib, sys
from email.message import EmailMessage
msg = EmailMessage()
msg["From"] = "scanner@contoso.example"
msg["To"] = "someone@example.com"
msg["Subject"] = "windows smoke test"
msg.set_content("Sent to smarthost.exe under Wine.\n")
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as s:
    s.ehlo("smoke-client")
    refused = s.send_message(msg)
    if refused:
        sys.exit(f"refused: {refused}")
print("accepted")
EOF

echo "waiting for the .eml in data/outbox"
eml=""
while [[ -z "$eml" ]]; do
    eml=$(find "$WORK/data/outbox" -name '*.eml' -print -quit 2>/dev/null || true)
    [[ -n "$eml" ]] && break
    ((SECONDS < DEADLINE)) || fail "no .eml in $WORK/data/outbox in time"
    sleep 1
done
grep -q "windows smoke test" "$eml" || fail "$eml does not hold the message"
grep -q "^Received: " "$eml" || fail "$eml has no Received: header"

echo "stopping smarthost.exe"
kill "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""

echo "serve: OK ($(basename "$eml"))"

# --- the Windows service: install, start, one message, stop, uninstall --------------------------
# Wine ends its services when no other Wine process is left, so a second relay (the built-in
# configuration: 127.0.0.1:2525, data in C:\ProgramData\smarthost) keeps this Wine session up.
echo "service: install, start, send, stop, uninstall"
"$WINE" ./smarthost.exe serve >"$WORK/keepalive.log" 2>&1 &
SERVER_PID=$!
SVC_DATA_WIN=$(winepath -w "$WORK/svcdata" 2>/dev/null | tr -d '\r')
[[ -n "$SVC_DATA_WIN" ]] || fail "winepath -w $WORK/svcdata gave nothing"
{
    echo "data_dir = '$SVC_DATA_WIN'"
    sed -e '/^data_dir = /d' -e "s/^address = .*/address = \"127.0.0.1:$SVC_PORT\"/" "$WORK/smarthost.toml"
} >"$WORK/service.toml"
timeout "$(remaining)" "$WINE" ./smarthost.exe service install --config service.toml \
    || fail "service install failed"
timeout "$(remaining)" "$WINE" net start smarthost || true # "already running": it starts automatically
timeout "$(remaining)" python3 - "$SVC_PORT" <<'PY' || fail "SMTP transaction with the service failed"
import smtplib, sys, time
from email.message import EmailMessage
msg = EmailMessage()
msg["From"] = "scanner@contoso.example"
msg["To"] = "someone@example.com"
msg["Subject"] = "windows service smoke test"
msg.set_content("Sent to the smarthost service under Wine.\n")
for attempt in range(30):
    try:
        s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30)
        break
    except OSError:
        time.sleep(1)
else:
    sys.exit("the service does not listen")
with s:
    refused = s.send_message(msg)
    if refused:
        sys.exit(f"refused: {refused}")
PY
timeout "$(remaining)" "$WINE" sc query smarthost | tr -d '\r' | grep -q "RUNNING" \
    || fail "the service is not running"
svc_eml=""
while [[ -z "$svc_eml" ]]; do
    svc_eml=$(find "$WORK/svcdata/outbox" -name '*.eml' -print -quit 2>/dev/null || true)
    [[ -n "$svc_eml" ]] && break
    ((SECONDS < DEADLINE)) || fail "no .eml in $WORK/svcdata/outbox in time"
    sleep 1
done
timeout "$(remaining)" "$WINE" net stop smarthost || fail "net stop smarthost failed"
grep -q "stopped" "$WORK/svcdata/service.log" || fail "the service did not log its stop"
timeout "$(remaining)" "$WINE" ./smarthost.exe service uninstall || fail "service uninstall failed"
if timeout "$(remaining)" "$WINE" sc query smarthost 2>/dev/null | tr -d '\r' | grep -q "SERVICE_NAME"; then
    fail "the service is still registered after uninstall"
fi
kill "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
echo "service: OK ($(basename "$svc_eml"))"

echo "PASS: smarthost.exe ($version) under Wine $("$WINE" --version): serve and the Windows service each delivered one message"
