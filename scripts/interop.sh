#!/usr/bin/env bash
# Interoperability checks: drives the release binary with third-party SMTP programs on 127.0.0.1.
#
#   scripts/interop.sh            install what is missing (apt), build, run every check
#
# Clients: swaks (PIPELINING, a 5 MB attachment, an oversized message, a denied client address),
# Python smtplib (two recipients; SMTPUTF8), curl (byte-exact, in and out), a raw SMTP smuggling
# attempt, Postfix's smtp-source (1000 messages) and Postfix's smtp client (Postfix relaying to us).
# Servers behind the relay: Postfix's smtp-sink (counting, or dumping each message to a file), a
# private Postfix smtpd offering STARTTLS (certificate from a throw-away CA, verified through the
# route's ca_file), and the relay's own drop folder. Also: SIGKILL with acknowledged mail in the
# spool, then restart; check-config on a broken file.
# Prints one PASS/FAIL line per check and "N passed, M failed" last; exits non-zero on any failure.
# Takes about 30 s after the build.
#
# Environment: SMARTHOST_BIN (skip the build, use this binary), KEEP_TMP=1 (keep the temp dir),
# SOURCE_MESSAGES (smtp-source count, default 1000).

set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE="$ROOT/scripts/interop"
# shellcheck source=scripts/interop/lib.sh
source "$HERE/lib.sh"
CHECK=(python3 "$HERE/check.py")
SOURCE_MESSAGES=${SOURCE_MESSAGES:-1000}

T=$(mktemp -d /tmp/smarthost-interop.XXXXXX)
chmod 755 "$T"
CLEANUP_PID_FILE="$T/pids" # checks run in subshells; what they start is stopped at exit too
RELAY_PID=""
finish() {
    local rc=$?
    if [ -n "$RELAY_PID" ]; then
        kill -TERM "$RELAY_PID" 2>/dev/null || true
    fi
    run_cleanup
    # The disk-full check's tmpfs, if a failure left it mounted.
    umount -l "$T/diskfull/data" 2>/dev/null || true
    if [ -n "$RELAY_PID" ]; then
        for _ in $(seq 1 100); do
            kill -0 "$RELAY_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$RELAY_PID" 2>/dev/null || true
    fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        log "kept $T"
    else
        rm -rf "$T"
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

PASSED=0
FAILED=0
FAILED_NAMES=()
# ---------------------------------------------------------------------------------------------
log "installing third-party programs (if missing)"
install_deps

if [ -n "${SMARTHOST_BIN:-}" ]; then
    BIN=$SMARTHOST_BIN
else
    log "building the release binary"
    (cd "$ROOT" && cargo build --release --quiet)
    BIN="$ROOT/target/release/smarthost"
fi
[ -x "$BIN" ] || die "no binary at $BIN"

# SINK_PORT:    counting smtp-sink, route "sink.test"
# NOTLS_PORT:   counting smtp-sink without STARTTLS, route "notls.test" (which requires STARTTLS)
# DUMP_PORT:    smtp-sink writing every message to $T/dump: route "dump.test", and Postfix's
#               transport for postfix-tls.test
# POSTFIX_PORT: private Postfix smtpd with STARTTLS, route "postfix-tls.test"
# RELAY_PORT:   smarthost
read -r SINK_PORT NOTLS_PORT DUMP_PORT POSTFIX_PORT RELAY_PORT <<<"$(free_ports 5)"

log "starting smtp-sink instances"
start_sink "$SINK_PORT" "$T/sink.count"
start_sink "$NOTLS_PORT" "$T/notls.count"
mkdir -p "$T/dump" && chown nobody "$T/dump" # smtp-sink writes as nobody
start_sink "$DUMP_PORT" "$T/dump.count" -d "$T/dump/%M."

log "making a throw-away CA and a certificate for 127.0.0.1"
mkdir -p "$T/tls"
(
    cd "$T/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=smarthost interop CA" \
        -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out server.pem 2>/dev/null
    chmod 644 server.key
)

log "starting a private Postfix on $POSTFIX_PORT (STARTTLS; relays to smarthost, postfix-tls.test to the dump sink)"
postfix_instance "$T/postfix" "$POSTFIX_PORT" "[127.0.0.1]:$RELAY_PORT" \
    "smtpd_tls_cert_file = $T/tls/server.pem" \
    "smtpd_tls_key_file = $T/tls/server.key" \
    "smtpd_tls_security_level = may" \
    "smtpd_tls_received_header = yes" \
    "smtpd_tls_loglevel = 1" \
    "transport_maps = inline:{postfix-tls.test=smtp:[127.0.0.1]:$DUMP_PORT}"

log "starting smarthost on $RELAY_PORT"
mkdir -p "$T/relay"
cat >"$T/relay/smarthost.toml" <<EOF
data_dir = "$T/relay/data"
hostname = "relay.test"

[[listener]]
address = "127.0.0.1:$RELAY_PORT"
relay_from = ["127.0.0.1/32"]

[limits]
max_message_size = "10MiB"
max_recipients = 500
max_connections = 1000

[queue]
max_concurrent_deliveries = 20

[[route]]
name = "sink"
domains = ["sink.test"]
transport = "smtp"
host = "127.0.0.1"
port = $SINK_PORT
tls = "none"

[[route]]
name = "dump"
domains = ["dump.test"]
transport = "smtp"
host = "127.0.0.1"
port = $DUMP_PORT
tls = "none"

[[route]]
name = "postfix-tls"
domains = ["postfix-tls.test"]
transport = "smtp"
host = "127.0.0.1"
port = $POSTFIX_PORT
tls = "starttls"
ca_file = "$T/tls/ca.pem"

[[route]]
name = "tls-required"
domains = ["notls.test"]
transport = "smtp"
host = "127.0.0.1"
port = $NOTLS_PORT
tls = "starttls"

[[route]]
name = "outbox"
domains = ["*"]
transport = "drop"
path = "outbox"
EOF
OUTBOX="$T/relay/data/outbox"
"$BIN" check-config "$T/relay/smarthost.toml" >&2 || die "the interop configuration is not valid"
NO_COLOR=1 "$BIN" serve --config "$T/relay/smarthost.toml" >"$T/relay/stdout" 2>"$T/relay/stderr" &
RELAY_PID=$!
if ! wait_for_port "$RELAY_PORT" 30; then
    cat "$T/relay/stderr" >&2
    die "smarthost did not listen on $RELAY_PORT"
fi
log "smarthost is up (pid $RELAY_PID)"

SWAKS=(timeout 60 swaks --server 127.0.0.1 --port "$RELAY_PORT" --helo interop.test --timeout 30)

# ---------------------------------------------------------------------------------------------
check_swaks_pipelining() {
    local m=swaks-pipe-$RANDOM$RANDOM
    "${SWAKS[@]}" --pipeline --from sender@src.test --to rcpt@example.com \
        --header "Subject: $m" --body "swaks body line $m" | tee "$T/swaks-pipe.out"
    grep -q '^<-  250-PIPELINING' "$T/swaks-pipe.out"
    # swaks really pipelined: MAIL, RCPT and DATA went out before the first reply came back.
    awk '$1 == "->" { sent = sent " " $2 } $1 ~ /^<[-*~]/ { sent = sent " <" } END { print sent }' \
        "$T/swaks-pipe.out" | grep -q -- ' MAIL RCPT DATA <'
    local f
    f=$("${CHECK[@]}" find "$OUTBOX" "$m" 20)
    "${CHECK[@]}" envelope "$f" "x-sender: sender@src.test" "x-receiver: rcpt@example.com"
    "${CHECK[@]}" contains "$f" "Subject: $m" "X-Mailer: swaks" "Message-Id: <" "swaks body line $m"
}

check_python_smtplib() {
    local m=smtplib-$RANDOM$RANDOM
    timeout 60 "${CHECK[@]}" smtplib-send 127.0.0.1 "$RELAY_PORT" py@src.test "$m" one@example.com two@example.org
    local f
    f=$("${CHECK[@]}" find "$OUTBOX" "$m" 20) # exactly one file: one message for both recipients
    "${CHECK[@]}" envelope "$f" "x-sender: py@src.test" "x-receiver: one@example.com" "x-receiver: two@example.org"
    "${CHECK[@]}" contains "$f" "Subject: smtplib $m"
}

check_python_smtputf8() {
    local m=utf8-$RANDOM$RANDOM f
    timeout 60 "${CHECK[@]}" smtplib-utf8 127.0.0.1 "$RELAY_PORT" "jörg@src.test" "$m" "用户@example.com"
    f=$("${CHECK[@]}" find "$OUTBOX" "$m" 20)
    "${CHECK[@]}" envelope "$f" "x-sender: jörg@src.test" "x-receiver: 用户@example.com"
    "${CHECK[@]}" contains "$f" "Subject: smtputf8 $m" "Grüße"
}

check_curl_byte_exact() {
    local m=curl-$RANDOM$RANDOM
    "${CHECK[@]}" make-message "$T/curl.eml" "$m"
    timeout 60 curl --silent --show-error --fail "smtp://127.0.0.1:$RELAY_PORT/interop.test" \
        --mail-from curl@src.test --mail-rcpt dest@example.com --upload-file "$T/curl.eml"
    local f
    f=$("${CHECK[@]}" find "$OUTBOX" "$m" 20)
    "${CHECK[@]}" envelope "$f" "x-sender: curl@src.test" "x-receiver: dest@example.com"
    "${CHECK[@]}" exact "$f" "$T/curl.eml"
    head -c 300 "$f"
}

# wait_dump MARKER SECONDS: prints the one smtp-sink dump file that contains MARKER.
wait_dump() { wait_dump_in "$T/dump" "$1" "$2"; }

check_curl_smtp_out_byte_exact() {
    # curl -> smarthost -> SMTP (dot-stuffing on the way out) -> smtp-sink dump.
    local m=curl-out-$RANDOM$RANDOM f
    "${CHECK[@]}" make-message "$T/curl-out.eml" "$m"
    timeout 60 curl --silent --show-error --fail "smtp://127.0.0.1:$RELAY_PORT/interop.test" \
        --mail-from curl@src.test --mail-rcpt dest@dump.test --upload-file "$T/curl-out.eml"
    f=$(wait_dump "$m" 30)
    grep -q '^X-Mail-Args: <curl@src.test>' "$f"
    grep -q '^X-Rcpt-Args: <dest@dump.test>' "$f"
    "${CHECK[@]}" sink-exact "$f" "$T/curl-out.eml"
}

check_smtp_smuggling() {
    # A bare-LF "." inside DATA must not end the message, neither here nor at the upstream.
    local m=smuggle-$RANDOM$RANDOM reply
    reply=$(timeout 60 "${CHECK[@]}" smuggle 127.0.0.1 "$RELAY_PORT" "$m" victim@dump.test)
    echo "relay answered the end of data with: $reply"
    sleep 2
    if grep -rlq '^X-Rcpt-Args: <inner-victim@dump.test>' "$T/dump"; then
        echo "the smuggled transaction was delivered as a message of its own"
        return 1
    fi
    case $reply in
    250*)
        local f
        f=$(wait_dump "outer $m" 30)
        grep -q "Subject: inner $m" "$f" # the fake transaction is body text of the one message
        if grep -q '^X-Rcpt-Args: <inner-' "$f"; then return 1; fi
        ;;
    5*) "${CHECK[@]}" absent "$OUTBOX" "$m" 0 ;;
    *) return 1 ;;
    esac
}

check_kill_9_recovery() {
    # A second relay whose upstream is down: 5 messages acknowledged, then SIGKILL; the upstream
    # comes up, the relay restarts and must deliver exactly those 5 from its spool.
    local sink_port relay_port dir="$T/kill9" pid i
    read -r sink_port relay_port <<<"$(free_ports 2)"
    mkdir -p "$dir"
    cat >"$dir/smarthost.toml" <<EOF
data_dir = "$dir/data"
hostname = "relay.test"

[[listener]]
address = "127.0.0.1:$relay_port"
relay_from = ["127.0.0.1/32"]

[queue]
retry = ["1s"]

[[route]]
name = "sink"
domains = ["*"]
transport = "smtp"
host = "127.0.0.1"
port = $sink_port
tls = "none"
EOF
    "$BIN" check-config "$dir/smarthost.toml"
    NO_COLOR=1 "$BIN" serve --config "$dir/smarthost.toml" >"$dir/stdout.1" 2>"$dir/stderr.1" &
    pid=$!
    track_pid "$pid"
    wait_for_port "$relay_port" 30 || { tail -n 20 "$dir/stderr.1"; return 1; }
    for i in 1 2 3 4 5; do
        timeout 60 swaks --server 127.0.0.1 --port "$relay_port" --from k@src.test --to "k$i@example.com" \
            --header "Subject: kill9 $i" --timeout 30 >"$dir/swaks.$i" 2>&1
        grep -E '^<- +250 ' "$dir/swaks.$i" | tail -n 1
    done
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    start_sink "$sink_port" "$dir/sink.count"
    NO_COLOR=1 "$BIN" serve --config "$dir/smarthost.toml" >"$dir/stdout.2" 2>"$dir/stderr.2" &
    track_pid $!
    if ! wait_sink_count "$dir/sink.count" 5 30; then
        echo "the sink counted $(sink_count "$dir/sink.count") of 5 within 30 s"
        tail -n 20 "$dir/stderr.2"
        return 1
    fi
    sleep 2 # and no duplicates
    echo "the sink counted $(sink_count "$dir/sink.count") messages"
    [ "$(sink_count "$dir/sink.count")" -eq 5 ]
}

check_disk_full_tmpfs() {
    # A real full file system: the relay's data directory on a 3 MiB tmpfs. Messages of about
    # 550 KiB are sent until the relay answers 452 4.3.1 instead of 250; every message that got its
    # 250 must then be delivered, and the relay must still answer. Needs root (CI runs as root).
    local sink_port relay_port dir="$T/diskfull" pid i accepted=0 refused=0 reply
    if [ "$(id -u)" -ne 0 ]; then
        echo "not root: cannot mount a tmpfs; skipped"
        return 0
    fi
    read -r sink_port relay_port <<<"$(free_ports 2)"
    mkdir -p "$dir/data"
    mount -t tmpfs -o size=3m tmpfs "$dir/data"
    cat >"$dir/smarthost.toml" <<CONFIG
data_dir = "$dir/data"
hostname = "relay.test"

[[listener]]
address = "127.0.0.1:$relay_port"
relay_from = ["127.0.0.1/32"]

[queue]
retry = ["1s"]
min_free_space = 0

[[route]]
name = "sink"
domains = ["*"]
transport = "smtp"
host = "127.0.0.1"
port = $sink_port
tls = "none"
CONFIG
    NO_COLOR=1 "$BIN" serve --config "$dir/smarthost.toml" >"$dir/stdout" 2>"$dir/stderr" &
    pid=$!
    track_pid "$pid"
    wait_for_port "$relay_port" 30 || { tail -n 20 "$dir/stderr"; return 1; }
    head -c 409600 /dev/urandom | base64 -w 76 >"$dir/body.txt"
    for i in $(seq 1 12); do
        timeout 60 swaks --server 127.0.0.1 --port "$relay_port" --from d@src.test --to "d$i@example.com" \
            --header "Subject: diskfull $i" --body "$dir/body.txt" --timeout 30 >"$dir/swaks.$i" 2>&1 || true
        # The reply to the end of data is the line before swaks' QUIT.
        reply=$(grep -E '^<[-*~]* +[0-9]{3} ' "$dir/swaks.$i" | tail -n 2 | head -n 1 || true)
        case "$reply" in
            *" 250 "*) accepted=$((accepted + 1)) ;;
            *" 452 4.3.1"*) refused=$((refused + 1)) ;;
            *)
                echo "unexpected reply for message $i: $reply"
                tail -n 8 "$dir/swaks.$i"
                return 1
                ;;
        esac
    done
    echo "accepted $accepted, refused $refused with 452 4.3.1"
    [ "$refused" -gt 0 ] || { echo "the file system never filled up"; return 1; }
    [ "$accepted" -gt 0 ] || { echo "nothing was accepted at all"; return 1; }
    start_sink "$sink_port" "$dir/sink.count"
    if ! wait_sink_count "$dir/sink.count" "$accepted" 60; then
        echo "the sink counted $(sink_count "$dir/sink.count") of $accepted within 60 s"
        tail -n 20 "$dir/stderr"
        return 1
    fi
    echo "the sink counted $(sink_count "$dir/sink.count") messages"
    kill -0 "$pid"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    umount "$dir/data"
}

check_admin_page() {
    # The admin web page in a real headless Chromium: enter the token, see a queued message, click
    # Retry, and the upstream gets it. Installs chromium, chromium-driver and selenium if missing;
    # in CI a failed install is a failure, not a skip.
    ADMIN_PAGE_REQUIRED=${CI:+1} python3 "$HERE/admin_page.py" "$BIN" | tee /dev/stderr | grep -q '^\(PASS\|SKIP\)'
}

check_smtp_source_to_sink() {
    local before after
    before=$(sink_count "$T/sink.count")
    timeout 300 /usr/sbin/smtp-source -s 10 -m "$SOURCE_MESSAGES" -l 4096 -f source@src.test \
        -t dest@sink.test "127.0.0.1:$RELAY_PORT"
    echo "smtp-source done after $((SECONDS))s of the script; waiting for the sink"
    if ! wait_sink_count "$T/sink.count" $((before + SOURCE_MESSAGES)) 120; then
        echo "sink counted $(($(sink_count "$T/sink.count") - before)) of $SOURCE_MESSAGES"
        return 1
    fi
    sleep 1 # nothing more than what was sent
    after=$(sink_count "$T/sink.count")
    echo "sink counted $((after - before)) messages"
    [ $((after - before)) -eq "$SOURCE_MESSAGES" ]
}

check_relay_denied() {
    local m=denied-$RANDOM$RANDOM rc=0
    "${SWAKS[@]}" --local-interface 127.0.0.2 --from x@src.test --to victim@example.com \
        --header "Subject: $m" >"$T/denied.out" 2>&1 || rc=$?
    cat "$T/denied.out"
    [ "$rc" -ne 0 ]
    grep -Eq '^<\*\* +550[ -]' "$T/denied.out"
    "${CHECK[@]}" absent "$OUTBOX" "$m" 2
}

check_config_errors() {
    mkdir -p "$T/broken"
    cat >"$T/broken/broken.toml" <<EOF
data_dir = "$T/broken/data"
hostname = "relay.test"

[[listener]]
address = "127.0.0.1:2525"
relay_from = ["127.0.0.0/8"]
colour = "blue"

[[route]]
name = "sink"
domains = ["*"]
transport = "smtp"
host = "127.0.0.1"
port = 99999
tls = "none"
EOF
    local rc=0
    "$BIN" check-config "$T/broken/broken.toml" >"$T/broken/out" 2>&1 || rc=$?
    cat "$T/broken/out"
    echo "exit status $rc"
    [ "$rc" -ne 0 ]
    grep -q 'broken.toml:7:' "$T/broken/out"   # the unknown key
    grep -q "broken.toml:14:" "$T/broken/out"  # the port out of range
    grep -q 'colour' "$T/broken/out"
    # And serve refuses the same file without starting.
    rc=0
    timeout 20 "$BIN" serve --config "$T/broken/broken.toml" >/dev/null 2>&1 || rc=$?
    [ "$rc" -ne 0 ]
    [ "$rc" -ne 124 ] # refused, not still running at the timeout
}

check_swaks_attachment() {
    local m=attach-$RANDOM$RANDOM sum f
    head -c 5000000 /dev/urandom >"$T/attach.bin"
    sum=$(sha256sum "$T/attach.bin" | cut -d' ' -f1)
    "${SWAKS[@]}" --from big@src.test --to big@example.com --header "Subject: $m" \
        --attach-type application/octet-stream --attach-name payload.bin --attach "@$T/attach.bin" \
        --suppress-data >"$T/attach.out" 2>&1 || { tail -n 20 "$T/attach.out"; return 1; }
    f=$("${CHECK[@]}" find "$OUTBOX" "$m" 30)
    "${CHECK[@]}" attachment "$f" payload.bin "$sum"
    ls -l "$f"
}

check_oversized_refused() {
    local m=oversized-$RANDOM$RANDOM rc=0
    head -c 12000000 /dev/zero | tr '\0' 'a' | fold -w 76 >"$T/big.txt"
    "${SWAKS[@]}" --from big@src.test --to big@example.com --header "Subject: $m" \
        --body "@$T/big.txt" --suppress-data >"$T/oversized.out" 2>&1 || rc=$?
    grep -E '^(<\*\*|<-) ' "$T/oversized.out" | tail -n 8
    [ "$rc" -ne 0 ]
    grep -Eq '^<\*\* +552[ -]' "$T/oversized.out"
    "${CHECK[@]}" absent "$OUTBOX" "$m" 1
}

check_postfix_client() {
    # swaks -> Postfix smtpd -> Postfix smtp client -> smarthost -> drop folder.
    local m=via-postfix-$RANDOM$RANDOM f
    timeout 60 swaks --server 127.0.0.1 --port "$POSTFIX_PORT" --from pf@src.test --to pf@example.com \
        --header "Subject: $m" --body "through Postfix $m" --timeout 30 >"$T/postfix-client.out" 2>&1 ||
        { cat "$T/postfix-client.out"; return 1; }
    f=$("${CHECK[@]}" find "$OUTBOX" "$m" 60) || { tail -n 20 "$T/postfix/maillog"; return 1; }
    "${CHECK[@]}" envelope "$f" "x-sender: pf@src.test" "x-receiver: pf@example.com"
    "${CHECK[@]}" contains "$f" "by postfix.test (Postfix)" "through Postfix $m"
    grep "relay=127.0.0.1\[127.0.0.1\]:$RELAY_PORT" "$T/postfix/maillog" | grep -q 'status=sent'
}

check_starttls_to_postfix() {
    # swaks -> smarthost -> STARTTLS (verified against ca_file) -> Postfix smtpd -> dump sink.
    local m=tls-$RANDOM$RANDOM
    "${SWAKS[@]}" --from tls@src.test --to tls@postfix-tls.test --header "Subject: $m" \
        --body "over TLS $m" >"$T/tls.out" 2>&1 || { cat "$T/tls.out"; return 1; }
    local deadline=$((SECONDS + 60)) f=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        f=$(grep -rl "$m" "$T/dump" 2>/dev/null | head -n 1 || true)
        [ -n "$f" ] && break
        sleep 0.2
    done
    if [ -z "$f" ]; then
        echo "not at the dump sink after 60 s"
        grep -i -E 'tls|error|warn' "$T/relay/stderr" | tail -n 10 || true
        tail -n 10 "$T/postfix/maillog"
        return 1
    fi
    # Postfix's Received: header for the hop from smarthost records the TLS session.
    sed -n '1,30p' "$f"
    grep -Eq '\(using TLSv1\.[23] with cipher' "$f"
    grep -q 'from relay.test' "$f"
    grep -q "over TLS $m" "$f"
}

check_tls_required_not_offered() {
    # Route "notls.test" requires STARTTLS; its upstream (smtp-sink) does not offer it.
    # The message must not be sent in clear text (it stays queued and is deferred).
    local m=notls-$RANDOM$RANDOM before
    before=$(sink_sessions "$T/notls.count") # wait_for_port's probe counts as one
    "${SWAKS[@]}" --from n@src.test --to n@notls.test --header "Subject: $m" >"$T/notls.out" 2>&1 ||
        { cat "$T/notls.out"; return 1; }
    # The relay did connect (the sink counts a session) but sent no message.
    local deadline=$((SECONDS + 20))
    while [ "$(sink_sessions "$T/notls.count")" -le "$before" ] && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.1
    done
    sleep 2
    echo "plain-text sink: $(sink_sessions "$T/notls.count") session(s), $(sink_count "$T/notls.count") message(s)"
    grep -E 'notls|STARTTLS' "$T/relay/stderr" | tail -n 5 || true
    [ "$(sink_sessions "$T/notls.count")" -gt "$before" ]
    [ "$(sink_count "$T/notls.count")" -eq 0 ]
}

check swaks-pipelining check_swaks_pipelining
check python-smtplib-two-recipients check_python_smtplib
check python-smtplib-smtputf8 check_python_smtputf8
check curl-byte-exact check_curl_byte_exact
check curl-smtp-out-byte-exact check_curl_smtp_out_byte_exact
check smtp-smuggling-bare-lf check_smtp_smuggling
check "smtp-source-${SOURCE_MESSAGES}-to-smtp-sink" check_smtp_source_to_sink
check kill-9-then-restart-delivers-all check_kill_9_recovery
check relay-denied-from-127.0.0.2 check_relay_denied
check check-config-names-lines check_config_errors
check swaks-5MB-attachment-sha256 check_swaks_attachment
check oversized-message-552 check_oversized_refused
check postfix-smtp-client-to-smarthost check_postfix_client
check starttls-verified-to-postfix-smtpd check_starttls_to_postfix
check starttls-required-never-plaintext check_tls_required_not_offered
check disk-full-tmpfs-452-nothing-lost check_disk_full_tmpfs
check admin-page-chromium check_admin_page

# Inbound checks (listeners with STARTTLS/implicit TLS, AUTH, limits) live in their own file and
# start their own relay; they report through check() like the rest.
if [ -f "$HERE/inbound.sh" ]; then
    # shellcheck source=scripts/interop/inbound.sh
    source "$HERE/inbound.sh"
    inbound_checks "$BIN"
fi

# `smarthost send` (the Send-MailMessage of this product) to Postfix's smtp-sink, directly and
# through the relay's queue.
if [ -f "$HERE/send.sh" ]; then
    # shellcheck source=scripts/interop/send.sh
    source "$HERE/send.sh"
    send_checks "$BIN"
fi

# The relay must still be alive after all of that.
if kill -0 "$RELAY_PID" 2>/dev/null; then
    PASSED=$((PASSED + 1))
    echo "PASS relay-still-running"
else
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=(relay-still-running)
    echo "FAIL relay-still-running"
    tail -n 30 "$T/relay/stderr" | sed 's/^/    | /'
fi

if [ "$FAILED" -gt 0 ]; then
    echo "failed: ${FAILED_NAMES[*]} (relay log: last lines below)"
    tail -n 30 "$T/relay/stderr" | sed 's/^/    | /'
fi
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
