#!/usr/bin/env bash
# shellcheck shell=bash
# `smarthost send` interoperability checks (issue 7): messages written by `smarthost send` are
# received by Postfix's smtp-sink (which dumps each message to a file) and read back with Python's
# `email` package: subject (RFC 2047), From/To/Cc, no Bcc header while the Bcc address is in the
# envelope, the HTML body, and each attachment's SHA-256 (a random binary file and a file with a
# non-ASCII name, RFC 2231).
#
#   scripts/interop/send.sh /path/to/smarthost
#       Runs standalone: one PASS/FAIL line per check, "N passed, M failed" last, exit 1 on failure.
#       KEEP_TMP=1 keeps the temporary directory.
#
#   source scripts/interop/send.sh; send_checks /path/to/smarthost
#       From scripts/interop.sh: uses check() (scripts/interop/lib.sh), $T, track_pid() and cleanup; defines functions only.
#
# Installs nothing: /usr/sbin/smtp-sink (postfix) and python3 must be there. Everything talks to
# 127.0.0.1 only. Checks:
#   send_direct_to_smtp_sink    smarthost send --tls none --port SINK  -> smtp-sink
#   send_via_queue_to_smtp_sink smarthost send --via-queue --config F  -> Pickup folder of a running
#                               relay -> its SMTP route -> smtp-sink

SEND_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# send_setup BIN DIR: an smtp-sink dumping into DIR/dump, test files, and a relay whose only route
# goes to the sink.
send_setup() {
    local bin=$1 dir=$2
    SEND_BIN=$bin
    SEND_DIR=$dir
    mkdir -p "$dir/dump" "$dir/files" "$dir/relay"
    chmod 755 "$dir"
    chown nobody "$dir/dump" # smtp-sink writes as nobody
    local ports
    read -r -a ports <<<"$(free_ports 2)"
    SEND_SINK_PORT=${ports[0]} SEND_RELAY_PORT=${ports[1]}
    start_sink "$SEND_SINK_PORT" "$dir/sink.count" -d "$dir/dump/%M."

    head -c 300000 /dev/urandom >"$dir/files/scan.bin"
    printf 'Rechnung;Betrag\r\nMärz;12,50\r\n' >"$dir/files/Übersicht März.csv"

    cat >"$dir/relay/smarthost.toml" <<TOML
data_dir = "$dir/relay/data"
hostname = "relay.test"

[[listener]]
address = "127.0.0.1:$SEND_RELAY_PORT"
relay_from = ["127.0.0.1/32"]

[[route]]
name = "sink"
domains = ["*"]
transport = "smtp"
host = "127.0.0.1"
port = $SEND_SINK_PORT
tls = "none"
TOML
    "$bin" serve --config "$dir/relay/smarthost.toml" >"$dir/relay/relay.log" 2>&1 &
    track_pid $!
    wait_for_port "$SEND_RELAY_PORT" 30 || die "the relay did not start: $(tail -n 20 "$dir/relay/relay.log")"
}

# send_wait_dump MARKER SECONDS: prints the one dump file that contains MARKER.
send_wait_dump() { wait_dump_in "$SEND_DIR/dump" "$1" "$2"; }

# send_validate DUMP MARKER: the dumped message, read with Python's email package, is the one
# send_message wrote.
send_validate() {
    python3 - "$1" "$2" "$SEND_DIR/files/scan.bin" "$SEND_DIR/files/Übersicht März.csv" <<'PY'
import email, email.policy, hashlib, os, sys

dump, marker, *files = sys.argv[1:]
with open(dump, "rb") as f:
    msg = email.message_from_bytes(f.read(), policy=email.policy.default)
def fail(why):
    sys.exit(f"{dump}: {why}")
expected_subject = f"Prüfbericht {marker} ✓"
if str(msg["Subject"]) != expected_subject:
    fail(f"subject {msg['Subject']!r} != {expected_subject!r}")
if msg["From"].addresses[0].addr_spec != "sender@src.test" or msg["From"].addresses[0].display_name != "Scan Station":
    fail(f"From: {msg['From']!r}")
if [a.addr_spec for a in msg["To"].addresses] != ["boss@dest.test", "ann@dest.test"]:
    fail(f"To: {msg['To']!r}")
if [a.addr_spec for a in msg["Cc"].addresses] != ["cc@dest.test"]:
    fail(f"Cc: {msg['Cc']!r}")
if msg["Bcc"] is not None:
    fail("a Bcc header was sent")
rcpts = sorted(str(v).strip("<>") for v in msg.get_all("X-Rcpt-Args", []))
if rcpts != ["ann@dest.test", "boss@dest.test", "cc@dest.test", "hidden@dest.test"]:
    fail(f"envelope recipients {rcpts}")
if not msg["Message-ID"] or "@" not in msg["Message-ID"] or not msg["Date"]:
    fail("no Message-ID or Date")
if msg.get_content_type() != "multipart/mixed":
    fail(f"content type {msg.get_content_type()}")
html = msg.get_body(preferencelist=("html",))
if html is None or f"<p>Grüße {marker}</p>" not in html.get_content():
    fail("no HTML body with the text")
attachments = {part.get_filename(): part.get_payload(decode=True) for part in msg.iter_attachments()}
for path in files:
    name = os.path.basename(path)
    with open(path, "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    if name not in attachments:
        fail(f"no attachment {name!r}; found {list(attachments)}")
    got = hashlib.sha256(attachments[name]).hexdigest()
    if got != want:
        fail(f"attachment {name!r}: sha256 {got} != {want}")
if msg.defects:
    fail(f"defects: {msg.defects}")
for part in msg.walk():
    if part.defects:
        fail(f"defects in {part.get_content_type()}: {part.defects}")
print(f"{dump}: valid; {len(attachments)} attachments match")
PY
}

# send_message MARKER ARGS...: smarthost send with the test message and ARGS.
send_message() {
    local marker=$1
    shift
    "$SEND_BIN" send "$@" \
        --from "Scan Station <sender@src.test>" \
        --to "boss@dest.test,Ann Other <ann@dest.test>" --cc cc@dest.test --bcc hidden@dest.test \
        --subject "Prüfbericht $marker ✓" \
        --html --body "<html><body><p>Grüße $marker</p></body></html>" \
        --attach "$SEND_DIR/files/scan.bin" --attach "$SEND_DIR/files/Übersicht März.csv"
}

send_direct_to_smtp_sink() {
    local m="send-direct-$RANDOM$RANDOM" f out
    out=$(send_message "$m" --server 127.0.0.1 --port "$SEND_SINK_PORT" --tls none --helo client.test)
    echo "$out"
    [ "$(grep -c '^delivered ' <<<"$out")" -eq 4 ]
    f=$(send_wait_dump "$m" 20)
    grep -q '^X-Helo-Args: client.test' "$f"
    send_validate "$f" "$m"
}

send_via_queue_to_smtp_sink() {
    local m="send-queue-$RANDOM$RANDOM" f out
    out=$(send_message "$m" --via-queue --config "$SEND_DIR/relay/smarthost.toml")
    echo "$out"
    grep -qF "$SEND_DIR/relay/data/pickup/" <<<"$out"
    f=$(send_wait_dump "$m" 30)
    send_validate "$f" "$m"
}

SEND_CHECKS=(send_direct_to_smtp_sink send_via_queue_to_smtp_sink)

send_checks() {
    local bin=$1 fn
    send_setup "$bin" "$T/send"
    for fn in "${SEND_CHECKS[@]}"; do
        check "$fn" "$fn"
    done
}

# --- standalone ------------------------------------------------------------------------------------

send_main() {
    set -euo pipefail
    local bin=${1:-}
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        echo "usage: $0 /path/to/smarthost" >&2
        exit 2
    fi
    bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
    [ -x /usr/sbin/smtp-sink ] || { echo "missing: /usr/sbin/smtp-sink (postfix)" >&2; exit 2; }
    command -v python3 >/dev/null || { echo "missing: python3" >&2; exit 2; }
    # shellcheck source=scripts/interop/lib.sh
    source "$SEND_HERE/lib.sh"
    T=$(mktemp -d /tmp/smarthost-send.XXXXXX)
    chmod 755 "$T"
    CLEANUP_PID_FILE="$T/pids"
    trap 'rc=$?; run_cleanup; if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi; exit $rc' EXIT
    trap 'exit 130' INT TERM

    PASSED=0
    FAILED=0
    FAILED_NAMES=()
    send_checks "$bin"
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    send_main "$@"
fi
