# shellcheck shell=bash
# Shared helpers for scripts/interop.sh, its parts in scripts/interop/ and bench/run.sh. Source it; it defines functions only.
#
# Everything here talks to 127.0.0.1 only. Every process a helper starts is recorded (track_pid,
# CLEANUP_POSTFIX) so that the caller's EXIT trap (run_cleanup) stops it. PIDs also go to the file
# CLEANUP_PID_FILE when the caller sets it, so that processes started in subshells are stopped too.

CLEANUP_PIDS=()
CLEANUP_POSTFIX=()
CLEANUP_PID_FILE=${CLEANUP_PID_FILE:-}

track_pid() {
    CLEANUP_PIDS+=("$1")
    if [ -n "$CLEANUP_PID_FILE" ]; then
        echo "$1" >>"$CLEANUP_PID_FILE"
    fi
}

log() { printf '%s %s\n' "[$(date +%H:%M:%S)]" "$*" >&2; }

# check NAME FUNCTION: runs FUNCTION with its output in $T/checks/NAME.log; prints PASS or FAIL
# (with the log's tail) and counts it in PASSED / FAILED (FAILED_NAMES lists the failures). A check
# fails on the first command that fails: errexit in a subshell, which is not run as an `if`/`||`
# condition because there bash would silently ignore errexit.
check() {
    local name=$1 fn=$2 started=$SECONDS rc
    mkdir -p "$T/checks"
    set +e
    (
        set -euo pipefail
        "$fn"
    ) >"$T/checks/$name.log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        PASSED=$((PASSED + 1))
        printf 'PASS %s (%ss)\n' "$name" "$((SECONDS - started))"
    else
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
        printf 'FAIL %s (%ss)\n' "$name" "$((SECONDS - started))"
        tail -n 25 "$T/checks/$name.log" | sed 's/^/    | /'
    fi
}

# wait_dump_in DIR MARKER SECONDS: prints the one smtp-sink dump file below DIR that contains
# MARKER; fails when there is none in time, or more than one (a message delivered twice).
wait_dump_in() {
    local deadline=$((SECONDS + $3)) files=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        files=$(grep -rlF -- "$2" "$1" 2>/dev/null || true)
        [ -n "$files" ] && break
        sleep 0.1
    done
    sleep 0.5 # a second copy would show up now
    files=$(grep -rlF -- "$2" "$1" 2>/dev/null || true)
    if [ "$(printf '%s' "$files" | grep -c .)" -ne 1 ]; then
        echo "expected one dump file with $2, found: ${files:-none}" >&2
        return 1
    fi
    echo "$files"
}

die() { log "error: $*"; exit 1; }

# Installs the third-party programs the scripts drive, on a fresh Debian machine too.
# Postfix is preseeded to "No configuration" so that installing it starts no system instance;
# we only use its binaries (smtp-source, smtp-sink, and private instances under a temp dir).
install_deps() {
    local missing=()
    command -v swaks >/dev/null || missing+=(swaks)
    { [ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/smtp-source ] && [ -x /usr/sbin/postfix ]; } ||
        missing+=(postfix)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v ss >/dev/null || missing+=(iproute2)
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    log "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# free_ports N: N distinct TCP ports on 127.0.0.1 that are free right now, on one line.
# (All are held open at once while the kernel picks them, so no two are the same.)
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# wait_for_port PORT [SECONDS]: until something accepts connections on 127.0.0.1:PORT.
wait_for_port() {
    local port=$1 limit=${2:-30} waited=0
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        sleep 0.1
        waited=$((waited + 1))
        if [ "$waited" -ge $((limit * 10)) ]; then
            return 1
        fi
    done
}

# start_sink PORT COUNTFILE [extra smtp-sink options...]: smtp-sink with running counters (-c)
# written to COUNTFILE. The counters are rewritten with \r; sink_count reads the last one.
start_sink() {
    local port=$1 countfile=$2
    shift 2
    /usr/sbin/smtp-sink -u nobody -c "$@" "127.0.0.1:$port" 1024 >"$countfile" 2>"$countfile.err" &
    track_pid $!
    wait_for_port "$port" 10 || die "smtp-sink did not start on port $port: $(cat "$countfile.err")"
}

# sink_count COUNTFILE: messages the sink has accepted (the "." of each DATA answered 250).
sink_count() {
    local n
    n=$(tr '\r' '\n' <"$1" | grep -o 'mesg=[0-9]*' | tail -n 1 | cut -d= -f2)
    echo "${n:-0}"
}

# sink_sessions COUNTFILE: SMTP sessions the sink has seen end.
sink_sessions() {
    local n
    n=$(tr '\r' '\n' <"$1" | grep -o 'sess=[0-9]*' | tail -n 1 | cut -d= -f2)
    echo "${n:-0}"
}

# wait_sink_count COUNTFILE TARGET SECONDS: polls every 20 ms; returns 1 on timeout.
wait_sink_count() {
    local file=$1 target=$2 limit=$3
    local deadline=$((SECONDS + limit))
    while [ "$(sink_count "$file")" -lt "$target" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.02
    done
}

# postfix_instance DIR SMTPD_PORT RELAYHOST [main.cf lines...]: a private Postfix (own config,
# queue and data directories under DIR) that accepts mail from 127.0.0.0/8 on 127.0.0.1:SMTPD_PORT
# and relays everything to RELAYHOST (e.g. "[127.0.0.1]:2526"). Apart from that, the stock
# defaults, including fsync of every queue file before the 250.
postfix_instance() {
    local dir=$1 port=$2 relayhost=$3
    shift 3
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
    # Postfix daemons run as the postfix user and must traverse the path to their queue.
    chmod 755 "$dir"
    chown postfix "$dir/data"
    cat >"$dir/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery
alias_maps =
alias_database =
relay_domains =
relayhost = $relayhost
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
default_process_limit = 100
biff = no
append_dot_mydomain = no
readme_directory = no
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
syslog_name = postfix-$port
EOF
    local line
    for line in "$@"; do
        printf '%s\n' "$line" >>"$dir/etc/main.cf"
    done
    cat >"$dir/etc/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    # "check" creates the queue directories and sets their owners and modes.
    /usr/sbin/postfix -c "$dir/etc" check >"$dir/check.log" 2>&1 ||
        die "postfix check failed: $(cat "$dir/check.log")"
    /usr/sbin/postfix -c "$dir/etc" start >"$dir/start.log" 2>&1 ||
        die "postfix start failed: $(cat "$dir/start.log")"
    CLEANUP_POSTFIX+=("$dir/etc")
    wait_for_port "$port" 30 || die "postfix did not listen on $port: $(tail -n 20 "$dir/maillog" 2>/dev/null)"
}

postfix_queue_count() {
    find "$1/queue/incoming" "$1/queue/active" "$1/queue/deferred" "$1/queue/maildrop" \
        -type f 2>/dev/null | wc -l
}

# Stops everything the helpers started. Call from the caller's EXIT trap.
run_cleanup() {
    local d pid
    for d in "${CLEANUP_POSTFIX[@]}"; do
        local master
        master=$(tr -dc 0-9 <"$d/../queue/pid/master.pid" 2>/dev/null || true)
        /usr/sbin/postfix -c "$d" stop >/dev/null 2>&1 || true
        if [ -n "$master" ]; then
            for _ in $(seq 1 100); do
                kill -0 "$master" 2>/dev/null || break
                sleep 0.1
            done
        fi
    done
    local pids=("${CLEANUP_PIDS[@]}")
    if [ -n "$CLEANUP_PID_FILE" ] && [ -f "$CLEANUP_PID_FILE" ]; then
        mapfile -t -O "${#pids[@]}" pids <"$CLEANUP_PID_FILE"
    fi
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Bounded wait for each to go; then insist.
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
