#!/usr/bin/env bash
# shellcheck shell=bash
# Inbound interoperability checks (issue 5): listeners, STARTTLS and implicit TLS, old TLS versions,
# the STARTTLS injection probe, AUTH, and connection limits, driven by third-party clients:
# swaks, openssl s_client, Python smtplib/ssl (scripts/interop/inbound_probe.py) and curl.
#
#   scripts/interop/inbound.sh /path/to/smarthost
#       Runs standalone: one PASS/FAIL line per check, "N passed, M failed" last, exit 1 on failure.
#       KEEP_TMP=1 keeps the temporary directory (relay log, configuration, each check's log).
#
#   source scripts/interop/inbound.sh; inbound_checks /path/to/smarthost
#       From scripts/interop.sh: uses check() (scripts/interop/lib.sh), $T, track_pid() and cleanup; defines functions only.
#
# Installs nothing: swaks, openssl, python3 and curl must be there. Everything talks to 127.0.0.1
# (and 127.0.0.2-5 as client source addresses) only. One relay is started with these listeners:
#   plain     relay_from 127.0.0.1, AUTH in plaintext allowed
#   starttls  STARTTLS (TLS 1.2+), AUTH only after TLS, relaying only after AUTH
#   implicit  TLS from the first byte (port 465 style), AUTH
#   legacy    STARTTLS with min_tls = "1.0", relay_from 127.0.0.1
#   require   STARTTLS, require_auth
#   limited   max_connections_per_ip 3, max_messages_per_connection 2, deny_from 127.0.0.2
# with [limits] command_timeout = "3s" (for the slowloris check) and two [[user]]s.

INB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INB_PROBE=(python3 "$INB_HERE/inbound_probe.py")
INB_PASSWORD="Sc4nner-interop!"
INB_BILLING_PASSWORD="Inv0ices-interop!"

# inbound_setup BIN DIR: certificates, configuration and a running relay under DIR.
inbound_setup() {
    local bin=$1 dir=$2
    INB_DIR=$dir
    mkdir -p "$dir/pki" "$dir/data"
    inbound_make_pki "$dir/pki"
    INB_CA="$dir/pki/ca.crt"

    local ports
    read -r -a ports <<<"$(free_ports 6)"
    INB_PLAIN=${ports[0]} INB_STARTTLS=${ports[1]} INB_IMPLICIT=${ports[2]}
    INB_LEGACY=${ports[3]} INB_REQUIRE=${ports[4]} INB_LIMITED=${ports[5]}

    local scanner_hash billing_hash
    scanner_hash=$(printf '%s\n' "$INB_PASSWORD" | "$bin" passwd)
    billing_hash=$(printf '%s\n' "$INB_BILLING_PASSWORD" | "$bin" passwd)
    local tls_files="certificate = \"$dir/pki/server.crt\"
private_key = \"$dir/pki/server.key\""
    cat >"$dir/smarthost.toml" <<EOF
data_dir = "$dir/data"
hostname = "relay.interop.test"

[[listener]]
address = "127.0.0.1:$INB_PLAIN"
relay_from = ["127.0.0.1/32"]
auth = true
allow_plaintext_auth = true

[[listener]]
address = "127.0.0.1:$INB_STARTTLS"
tls = "starttls"
$tls_files
auth = true

[[listener]]
address = "127.0.0.1:$INB_IMPLICIT"
tls = "implicit"
$tls_files
auth = true

[[listener]]
address = "127.0.0.1:$INB_LEGACY"
relay_from = ["127.0.0.1/32"]
tls = "starttls"
$tls_files
min_tls = "1.0"

[[listener]]
address = "127.0.0.1:$INB_REQUIRE"
relay_from = ["127.0.0.1/32"]
tls = "starttls"
$tls_files
require_auth = true

[[listener]]
address = "127.0.0.1:$INB_LIMITED"
relay_from = ["127.0.0.0/8"]
deny_from = ["127.0.0.2/32"]
max_connections_per_ip = 3
max_messages_per_connection = 2

[limits]
command_timeout = "3s"

[[user]]
name = "scanner"
password_hash = "$scanner_hash"

[[user]]
name = "billing"
password_hash = "$billing_hash"
allowed_senders = ["billing@contoso.com"]

[auth_lockout]
max_failures = 3
window = "10m"
duration = "30m"

[[route]]
name = "outbox"
domains = ["*"]
transport = "drop"
path = "outbox"
EOF
    "$bin" check-config "$dir/smarthost.toml" >"$dir/check-config.log" 2>&1 ||
        die "the inbound configuration does not load: $(cat "$dir/check-config.log")"
    SMARTHOST_LOG=${SMARTHOST_LOG:-info} "$bin" serve --config "$dir/smarthost.toml" \
        >"$dir/relay.log" 2>&1 &
    INB_RELAY_PID=$!
    track_pid "$INB_RELAY_PID"
    local port
    for port in "${ports[@]}"; do
        wait_for_port "$port" 30 || die "the relay did not listen on $port: $(tail -n 20 "$dir/relay.log")"
    done
}

# A throw-away CA and a server certificate for localhost and 127.0.0.1 (RSA: what old devices
# speak), made with the openssl command.
inbound_make_pki() {
    local d=$1
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=smarthost interop CA" \
        -keyout "$d/ca.key" -out "$d/ca.crt" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$d/server.key" -out "$d/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$d/ext.cnf"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/ext.cnf" -out "$d/server.crt" >/dev/null 2>&1
}

# inb_wait_message SUBJECT [PROTOCOL]: the message with this subject arrives in the outbox (within
# 15 s); with PROTOCOL, its Received header says "with PROTOCOL".
inb_wait_message() {
    local subject=$1 protocol=${2:-} file=""
    local deadline=$((SECONDS + 15))
    while [ -z "$file" ]; do
        file=$(grep -l -F "Subject: $subject" "$INB_DIR/data/outbox/"*.eml 2>/dev/null | head -n 1 || true)
        if [ -z "$file" ]; then
            [ "$SECONDS" -lt "$deadline" ] || { echo "no message with subject '$subject' in the outbox"; return 1; }
            sleep 0.1
        fi
    done
    echo "delivered: $file"
    if [ -n "$protocol" ]; then
        grep -q -F " with $protocol id " "$file" ||
            { echo "expected 'with $protocol' in:"; head -n 5 "$file"; return 1; }
    fi
}

inb_swaks() {
    swaks --server 127.0.0.1 --from scan@contoso.com --to boss@example.com --timeout 15 "$@"
}

# --- the checks ----------------------------------------------------------------------------------

inbound_swaks_starttls_auth_plain() {
    inb_swaks --port "$INB_STARTTLS" --tls --auth PLAIN --auth-user scanner \
        --auth-password "$INB_PASSWORD" --header "Subject: swaks-starttls-plain"
    inb_wait_message swaks-starttls-plain ESMTPSA
}

inbound_swaks_starttls_auth_login() {
    inb_swaks --port "$INB_STARTTLS" --tls --auth LOGIN --auth-user scanner \
        --auth-password "$INB_PASSWORD" --header "Subject: swaks-starttls-login"
    inb_wait_message swaks-starttls-login ESMTPSA
}

inbound_swaks_implicit_tls_auth() {
    inb_swaks --port "$INB_IMPLICIT" --tlsc --auth LOGIN --auth-user scanner \
        --auth-password "$INB_PASSWORD" --header "Subject: swaks-implicit"
    inb_wait_message swaks-implicit ESMTPSA
}

inbound_swaks_plaintext_auth_where_allowed() {
    inb_swaks --port "$INB_PLAIN" --auth PLAIN --auth-user scanner \
        --auth-password "$INB_PASSWORD" --header "Subject: swaks-plaintext-auth"
    inb_wait_message swaks-plaintext-auth ESMTPA
}

inbound_swaks_tls_protocols() {
    local p out
    for p in tlsv1_2 tlsv1_3; do
        echo "== $p on the default (min_tls 1.2) listener"
        inb_swaks --port "$INB_STARTTLS" --tls --tls-protocol "$p" --auth PLAIN \
            --auth-user scanner --auth-password "$INB_PASSWORD" --header "Subject: swaks-$p"
        inb_wait_message "swaks-$p" ESMTPSA
    done
    for p in tlsv1 tlsv1_1; do
        echo "== $p on the min_tls 1.0 listener"
        inb_swaks --port "$INB_LEGACY" --tls --tls-protocol "$p" \
            --tls-cipher 'DEFAULT:@SECLEVEL=0' --header "Subject: swaks-legacy-$p"
        inb_wait_message "swaks-legacy-$p" ESMTPS
        echo "== $p on the default listener: refused"
        if out=$(inb_swaks --port "$INB_STARTTLS" --tls --tls-protocol "$p" \
            --tls-cipher 'DEFAULT:@SECLEVEL=0' --quit-after tls 2>&1); then
            echo "$out"
            echo "$p was accepted by a min_tls 1.2 listener"
            return 1
        fi
        echo "refused as expected"
    done
}

inbound_swaks_wrong_password_is_535() {
    local out
    if out=$(inb_swaks --local-interface 127.0.0.3 --port "$INB_STARTTLS" --tls --auth PLAIN \
        --auth-user scanner --auth-password wrong 2>&1); then
        echo "$out"
        echo "a wrong password was accepted"
        return 1
    fi
    echo "$out" | grep -F "535 5.7.8 Authentication credentials invalid"
}

inbound_swaks_require_auth_is_530() {
    local out
    if out=$(inb_swaks --port "$INB_REQUIRE" --tls 2>&1); then
        echo "$out"
        echo "MAIL without AUTH was accepted on a require_auth listener"
        return 1
    fi
    echo "$out" | grep -F "530 5.7.0 Authentication required"
}

inbound_swaks_allowed_senders() {
    local out
    if out=$(swaks --server 127.0.0.1 --port "$INB_STARTTLS" --tls --auth PLAIN \
        --auth-user billing --auth-password "$INB_BILLING_PASSWORD" \
        --from ceo@contoso.com --to boss@example.com --timeout 15 2>&1); then
        echo "$out"
        echo "a sender outside allowed_senders was accepted"
        return 1
    fi
    echo "$out" | grep -F "550 5.7.1 Sender address <ceo@contoso.com> not allowed for user billing"
    swaks --server 127.0.0.1 --port "$INB_STARTTLS" --tls --auth PLAIN --auth-user billing \
        --auth-password "$INB_BILLING_PASSWORD" --from billing@contoso.com --to boss@example.com \
        --timeout 15 --header "Subject: swaks-allowed-sender"
    inb_wait_message swaks-allowed-sender ESMTPSA
}

# openssl s_client -starttls smtp with a version pinned: prints the negotiated protocol or fails.
inb_s_client() {
    local port=$1
    shift
    openssl s_client -connect "127.0.0.1:$port" -starttls smtp -CAfile "$INB_CA" \
        -verify_return_error -verify_hostname localhost "$@" </dev/null 2>&1
}

inbound_openssl_tls10_and_tls11_with_min_tls_1_0() {
    local out
    out=$(inb_s_client "$INB_LEGACY" -tls1 -cipher 'DEFAULT:@SECLEVEL=0')
    echo "$out" | grep -E "^ *Protocol *: TLSv1$"
    out=$(inb_s_client "$INB_LEGACY" -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0')
    echo "$out" | grep -E "^ *Protocol *: TLSv1.1$"
    out=$(inb_s_client "$INB_LEGACY")
    echo "$out" | grep -E "^New, TLSv1.3, Cipher is "
}

inbound_openssl_tls10_and_tls11_refused_by_default() {
    local v out
    for v in -tls1 -tls1_1; do
        if out=$(inb_s_client "$INB_STARTTLS" "$v" -cipher 'DEFAULT:@SECLEVEL=0'); then
            if echo "$out" | grep -E "^ *Protocol *: TLSv1(\.1)?$"; then
                echo "$v was accepted by a min_tls 1.2 listener"
                return 1
            fi
        fi
        echo "$v refused as expected"
    done
    out=$(inb_s_client "$INB_STARTTLS")
    echo "$out" | grep -F "Verify return code: 0 (ok)"
    echo "$out" | grep -E "^New, TLSv1.3, Cipher is "
}

inbound_openssl_implicit_tls() {
    local out
    out=$(openssl s_client -connect "127.0.0.1:$INB_IMPLICIT" -CAfile "$INB_CA" \
        -verify_return_error -verify_hostname localhost -ign_eof 2>&1 <<<"QUIT")
    echo "$out" | grep -E "^220 relay.interop.test"
    echo "$out" | grep -F "Verify return code: 0 (ok)"
}

inbound_starttls_injection_probe() {
    "${INB_PROBE[@]}" injection "$INB_STARTTLS" "$INB_CA"
}

inbound_auth_needs_tls() {
    "${INB_PROBE[@]}" auth-before-tls "$INB_STARTTLS" scanner "$INB_PASSWORD"
}

inbound_python_smtplib_starttls_login() {
    "${INB_PROBE[@]}" smtplib-starttls "$INB_STARTTLS" "$INB_CA" scanner "$INB_PASSWORD" \
        python-starttls
    inb_wait_message python-starttls ESMTPSA
}

inbound_python_smtplib_ssl_login() {
    "${INB_PROBE[@]}" smtplib-ssl "$INB_IMPLICIT" "$INB_CA" scanner "$INB_PASSWORD" python-ssl
    inb_wait_message python-ssl ESMTPSA
}

inbound_curl_ssl_reqd_user() {
    local msg="$INB_DIR/curl-message.eml"
    printf 'From: scan@contoso.com\r\nTo: boss@example.com\r\nSubject: curl-starttls\r\n\r\nhello\r\n' >"$msg"
    curl --silent --show-error --max-time 20 --ssl-reqd --cacert "$INB_CA" \
        --url "smtp://localhost:$INB_STARTTLS" --user "scanner:$INB_PASSWORD" \
        --mail-from scan@contoso.com --mail-rcpt boss@example.com --upload-file "$msg"
    inb_wait_message curl-starttls ESMTPSA
    printf 'From: scan@contoso.com\r\nTo: boss@example.com\r\nSubject: curl-smtps\r\n\r\nhello\r\n' >"$msg"
    curl --silent --show-error --max-time 20 --cacert "$INB_CA" \
        --url "smtps://localhost:$INB_IMPLICIT" --user "scanner:$INB_PASSWORD" \
        --mail-from scan@contoso.com --mail-rcpt boss@example.com --upload-file "$msg"
    inb_wait_message curl-smtps ESMTPSA
    local rc=0
    curl --silent --show-error --max-time 20 --ssl-reqd --cacert "$INB_CA" \
        --url "smtp://localhost:$INB_STARTTLS" --user "nobody:wrong" --interface 127.0.0.3 \
        --mail-from scan@contoso.com --mail-rcpt boss@example.com --upload-file "$msg" || rc=$?
    # 67: the login was denied.
    [ "$rc" -eq 67 ] || { echo "curl with a wrong password exited $rc, expected 67"; return 1; }
}

inbound_connection_limits() {
    "${INB_PROBE[@]}" deny "$INB_LIMITED" 127.0.0.2
    "${INB_PROBE[@]}" per-ip "$INB_LIMITED" 3
}

inbound_messages_per_connection() {
    "${INB_PROBE[@]}" messages-per-connection "$INB_LIMITED" 2
}

inbound_slowloris_cut_by_command_timeout() {
    "${INB_PROBE[@]}" slowloris "$INB_PLAIN" 3
}

inbound_auth_lockout() {
    "${INB_PROBE[@]}" lockout "$INB_STARTTLS" "$INB_CA" 127.0.0.5 scanner "$INB_PASSWORD" 3
}

inbound_passwords_not_logged() {
    if grep -F -e "$INB_PASSWORD" -e "$INB_BILLING_PASSWORD" "$INB_DIR/relay.log"; then
        echo "a password appears in the relay's log"
        return 1
    fi
    grep -c "authenticated" "$INB_DIR/relay.log"
}

INBOUND_CHECKS=(
    inbound_swaks_starttls_auth_plain
    inbound_swaks_starttls_auth_login
    inbound_swaks_implicit_tls_auth
    inbound_swaks_plaintext_auth_where_allowed
    inbound_swaks_tls_protocols
    inbound_swaks_wrong_password_is_535
    inbound_swaks_require_auth_is_530
    inbound_swaks_allowed_senders
    inbound_openssl_tls10_and_tls11_with_min_tls_1_0
    inbound_openssl_tls10_and_tls11_refused_by_default
    inbound_openssl_implicit_tls
    inbound_starttls_injection_probe
    inbound_auth_needs_tls
    inbound_python_smtplib_starttls_login
    inbound_python_smtplib_ssl_login
    inbound_curl_ssl_reqd_user
    inbound_connection_limits
    inbound_messages_per_connection
    inbound_slowloris_cut_by_command_timeout
    inbound_auth_lockout
    inbound_passwords_not_logged
)

# inbound_checks BIN: starts the relay under $T/inbound and runs every check with check().
inbound_checks() {
    local bin=$1 fn
    inbound_setup "$bin" "$T/inbound"
    for fn in "${INBOUND_CHECKS[@]}"; do
        check "${fn#inbound_}" "$fn"
    done
}

# --- standalone ------------------------------------------------------------------------------------

inbound_main() {
    set -euo pipefail
    local bin=${1:-}
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        echo "usage: $0 /path/to/smarthost" >&2
        exit 2
    fi
    bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
    local tool
    for tool in swaks openssl python3 curl; do
        command -v "$tool" >/dev/null || { echo "missing: $tool (this script installs nothing)" >&2; exit 2; }
    done
    # shellcheck source=scripts/interop/lib.sh
    source "$INB_HERE/lib.sh"
    T=$(mktemp -d /tmp/smarthost-inbound.XXXXXX)
    CLEANUP_PID_FILE="$T/pids"
    trap 'rc=$?; run_cleanup; if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi; exit $rc' EXIT
    trap 'exit 130' INT TERM

    PASSED=0
    FAILED=0
    FAILED_NAMES=()
    inbound_checks "$bin"
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    inbound_main "$@"
fi
