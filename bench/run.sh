#!/usr/bin/env bash
# Throughput of smarthost against Postfix, end to end, on this machine:
#
#   smtp-source -> smarthost -> smtp-sink        smtp-source -> Postfix (private instance) -> smtp-sink
#
# Both relays fsync each message before answering 250 (Postfix does by default; smarthost always
# does), both deliver to their own smtp-sink over plain SMTP with up to 20 connections, and both
# log every message (smarthost at info to a file, Postfix through postlogd to a file). Postfix
# runs its stock defaults except what a private loopback relay needs (see postfix_instance in
# scripts/interop/lib.sh): no chroot, no local delivery, no DNS (the machine has no network).
# End to end = from the start of smtp-source until that system's sink has counted every message.
# A warm-up run for each system is discarded; measured rounds alternate the order of the systems.
#
# Environment (defaults in brackets):
#   MSG_SIZES ["4096 102400 1048576"]  payload bytes per message (smtp-source -l), one table row
#                          per size and system (MSG_SIZE: one size, for compatibility)
#   MESSAGES               messages per measured run, every size [5000 at 4 KiB, 1000 at 100 KiB,
#                          300 at 1 MiB; other sizes: 5000 * 4096 / size, at least 100]
#   SESSIONS [20]          parallel smtp-source sessions
#   LATENCY_MESSAGES       messages of the latency run per size and system (bench/latency.py:
#                          p50/p99 from the end of DATA to the 250, SESSIONS connections)
#                          [half the size's MESSAGES; 0: no latency run]
#   IDLE_CONNECTIONS [1000] idle connections held open for the memory figure (0: none)
#   ROUNDS [3]             measured runs per system and size (the table shows the median)
#   WARMUP [500]           messages of the discarded warm-up run per system (0: none)
#   DELIVERIES [20]        smarthost [queue] max_concurrent_deliveries, and Postfix
#                          default_destination_concurrency_limit
#   SOURCE_REUSE [0]       1: smtp-source -d (several messages per connection)
#   SETTLE [2]             seconds of rest after a `sync` before each run
#   RUN_TIMEOUT [900]      seconds one run may take before the bench gives up
#   SYSTEMS ["smarthost postfix direct"]   direct: smtp-source straight into smtp-sink, the
#                          ceiling of this harness on this machine (no relay in between)
#   SMARTHOST_BIN          use this binary instead of building target/release/smarthost
#   BENCH_DIR              parent of the temp dir (default /tmp; put it on the disk to measure)
#   KEEP_TMP [0]           1: keep the temp dir (logs, configs, queues)

set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/interop/lib.sh
source "$ROOT/scripts/interop/lib.sh"

SESSIONS=${SESSIONS:-20}
MSG_SIZES=${MSG_SIZES:-${MSG_SIZE:-4096 102400 1048576}}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-1000}

# messages_for SIZE: the messages of one measured run of that size.
messages_for() {
    if [ -n "${MESSAGES:-}" ]; then
        echo "$MESSAGES"
        return
    fi
    case $1 in
    4096) echo 5000 ;;
    102400) echo 1000 ;;
    1048576) echo 300 ;;
    *) echo $((5000 * 4096 / $1 > 100 ? 5000 * 4096 / $1 : 100)) ;;
    esac
}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-500}
DELIVERIES=${DELIVERIES:-20}
SOURCE_REUSE=${SOURCE_REUSE:-0}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
SYSTEMS=${SYSTEMS:-smarthost postfix direct}
SETTLE=${SETTLE:-2}

T=$(mktemp -d "${BENCH_DIR:-/tmp}/smarthost-bench.XXXXXX")
chmod 755 "$T"
RELAY_PID=""
finish() {
    local rc=$?
    if [ -n "$RELAY_PID" ]; then
        kill -TERM "$RELAY_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$RELAY_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$RELAY_PID" 2>/dev/null || true
    fi
    run_cleanup
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        log "kept $T"
    else
        rm -rf "$T"
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

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

declare -A SINK_PORT ENTRY_PORT COUNTFILE
read -r -a PORTS <<<"$(free_ports 6)"
i=0
for sys in $SYSTEMS; do
    SINK_PORT[$sys]=${PORTS[$i]}
    ENTRY_PORT[$sys]=${PORTS[$((i + 1))]}
    i=$((i + 2))
    COUNTFILE[$sys]="$T/$sys-sink.count"
    start_sink "${SINK_PORT[$sys]}" "${COUNTFILE[$sys]}"
done

for sys in $SYSTEMS; do
    case $sys in
    smarthost)
        mkdir -p "$T/smarthost"
        cat >"$T/smarthost/smarthost.toml" <<EOF
data_dir = "$T/smarthost/data"
hostname = "smarthost.bench.test"

[[listener]]
address = "127.0.0.1:${ENTRY_PORT[smarthost]}"
relay_from = ["127.0.0.0/8"]

max_connections_per_ip = 5000

[limits]
max_message_size = "35MiB"
max_recipients = 500
max_connections = 5000

[queue]
max_concurrent_deliveries = $DELIVERIES

[[route]]
name = "sink"
domains = ["*"]
transport = "smtp"
host = "127.0.0.1"
port = ${SINK_PORT[smarthost]}
tls = "none"
EOF
        NO_COLOR=1 "$BIN" serve --config "$T/smarthost/smarthost.toml" \
            >"$T/smarthost/stdout" 2>"$T/smarthost/stderr" &
        RELAY_PID=$!
        wait_for_port "${ENTRY_PORT[smarthost]}" 30 ||
            die "smarthost did not start: $(tail -n 20 "$T/smarthost/stderr")"
        ;;
    postfix)
        postfix_instance "$T/postfix" "${ENTRY_PORT[postfix]}" "[127.0.0.1]:${SINK_PORT[postfix]}" \
            "message_size_limit = 36700160" \
            "default_destination_concurrency_limit = $DELIVERIES" \
            "smtp_destination_concurrency_limit = $DELIVERIES"
        ;;
    direct)
        # The harness's own ceiling: smtp-source straight into smtp-sink, no relay, no disk.
        ENTRY_PORT[direct]=${SINK_PORT[direct]}
        ;;
    *) die "unknown system $sys (SYSTEMS: smarthost postfix direct)" ;;
    esac
    log "$sys listens on ${ENTRY_PORT[$sys]}, delivers to smtp-sink on ${SINK_PORT[$sys]}"
done

SOURCE_OPTS=()
[ "$SOURCE_REUSE" = 1 ] && SOURCE_OPTS+=(-d)

# run SYSTEM MESSAGES SIZE: prints "ACCEPT_SECONDS TOTAL_SECONDS".
run() {
    local sys=$1 n=$2 size=$3 target
    # Start every run from a quiet disk: flush what the previous run (of either system) left in
    # the page cache, so that its writeback does not slow down this run's fsyncs.
    sync
    sleep "$SETTLE"
    target=$(($(sink_count "${COUNTFILE[$sys]}") + n))
    python3 "$ROOT/bench/measure.py" "${COUNTFILE[$sys]}" "$target" "$RUN_TIMEOUT" \
        /usr/sbin/smtp-source "${SOURCE_OPTS[@]}" -s "$SESSIONS" -m "$n" -l "$size" \
        -f bench@src.bench.test -t sink@dest.bench.test "127.0.0.1:${ENTRY_PORT[$sys]}" ||
        die "$sys: the run of $n messages of $size bytes failed"
    # Exactly n arrived: no duplicates (give stragglers a moment to show up).
    sleep 0.5
    local got=$(($(sink_count "${COUNTFILE[$sys]}") - target + n))
    [ "$got" -eq "$n" ] || die "$sys: the sink counted $got messages, expected $n"
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "== machine"
echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kernel: $(uname -sr); memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "temp dir: $T on $(df -T "$T" | awk 'NR==2 {print $2" ("$1")"}')"
echo "postfix $(/usr/sbin/postconf -h mail_version); $("$BIN" --version)"
echo "smtp-source ${SOURCE_OPTS[*]:+${SOURCE_OPTS[*]} }-s $SESSIONS -m MESSAGES -l SIZE; deliveries $DELIVERIES per system; rounds $ROUNDS"

if [ "$WARMUP" -gt 0 ]; then
    for sys in $SYSTEMS; do
        log "warm-up: $sys, $WARMUP messages (discarded)"
        run "$sys" "$WARMUP" 4096 >/dev/null
    done
fi

declare -A ACCEPT=() TOTAL=() LATENCY=()
for size in $MSG_SIZES; do
    n=$(messages_for "$size")
    for round in $(seq 1 "$ROUNDS"); do
        order=$SYSTEMS
        # Alternate which system goes first, so neither always gets the cooler page cache.
        [ $((round % 2)) -eq 0 ] && order=$(echo "$SYSTEMS" | tr ' ' '\n' | tac | tr '\n' ' ')
        for sys in $order; do
            log "run: $sys, $n messages of $size bytes, round $round"
            out=$(run "$sys" "$n" "$size")
            read -r a t <<<"$out"
            log "  $sys: smtp-source done in ${a}s, sink complete in ${t}s"
            ACCEPT[$sys,$size]="${ACCEPT[$sys,$size]:-} $a"
            TOTAL[$sys,$size]="${TOTAL[$sys,$size]:-} $t"
        done
    done
    lat_n=${LATENCY_MESSAGES:-$((n / 2))}
    [ "$lat_n" -gt 0 ] || continue
    for sys in $SYSTEMS; do
        [ "$sys" = direct ] && continue
        log "latency: $sys, $lat_n messages of $size bytes over $SESSIONS connections"
        sync
        sleep "$SETTLE"
        before=$(sink_count "${COUNTFILE[$sys]}")
        LATENCY[$sys,$size]=$(timeout "$RUN_TIMEOUT" python3 "$ROOT/bench/latency.py" 127.0.0.1 \
            "${ENTRY_PORT[$sys]}" "$lat_n" "$SESSIONS" "$size") ||
            die "$sys: the latency run of $size bytes failed"
        # Let the relay deliver all of them before the next run counts its own.
        wait_sink_count "${COUNTFILE[$sys]}" $((before + lat_n)) "$RUN_TIMEOUT" ||
            die "$sys: the latency run's messages did not all reach the sink"
    done
done

declare -A MEMORY=()
if [ "$IDLE_CONNECTIONS" -gt 0 ]; then
    for sys in $SYSTEMS; do
        case $sys in
        smarthost) pid=$RELAY_PID ;;
        postfix) pid=$(tr -dc 0-9 <"$T/postfix/queue/pid/master.pid") ;;
        *) continue ;;
        esac
        log "memory: $sys at rest and with $IDLE_CONNECTIONS idle connections"
        MEMORY[$sys]=$(python3 "$ROOT/bench/idle.py" 127.0.0.1 "${ENTRY_PORT[$sys]}" \
            "$IDLE_CONNECTIONS" "$pid") || die "$sys: the idle-connection run failed"
    done
fi

echo "== results (median of $ROUNDS round(s); msg/s = messages / seconds)"
printf '%-10s %-10s %9s %9s %14s %14s %12s\n' system size messages sessions "accepted/s" "end-to-end/s" "e2e seconds"
for size in $MSG_SIZES; do
    for sys in $SYSTEMS; do
        a=$(echo "${ACCEPT[$sys,$size]}" | median)
        t=$(echo "${TOTAL[$sys,$size]}" | median)
        awk -v s="$sys" -v z="$size" -v n="$(messages_for "$size")" -v c="$SESSIONS" -v a="$a" -v t="$t" \
            'BEGIN { printf "%-10s %-10s %9s %9s %14.1f %14.1f %12.2f\n", s, z, n, c, n / a, n / t, t }'
    done
    if [[ " $SYSTEMS " == *" smarthost "* && " $SYSTEMS " == *" postfix "* ]]; then
        s=$(echo "${TOTAL[smarthost,$size]}" | median)
        p=$(echo "${TOTAL[postfix,$size]}" | median)
        awk -v z="$size" -v s="$s" -v p="$p" \
            'BEGIN { printf "ratio smarthost/postfix, end to end, %s bytes: %.2f\n", z, p / s }'
    fi
done

if [ "${#LATENCY[@]}" -gt 0 ]; then
    echo "== latency: end of DATA to 250, $SESSIONS connections (bench/latency.py)"
    printf '%-10s %-10s %9s %9s %9s %12s\n' system size "p50 ms" "p99 ms" "max ms" "messages/s"
    for size in $MSG_SIZES; do
        for sys in $SYSTEMS; do
            [ -n "${LATENCY[$sys,$size]:-}" ] || continue
            read -r p50 p99 mx rate <<<"${LATENCY[$sys,$size]}"
            printf '%-10s %-10s %9s %9s %9s %12s\n' "$sys" "$size" "$p50" "$p99" "$mx" "$rate"
        done
    done
fi

if [ "${#MEMORY[@]}" -gt 0 ]; then
    echo "== memory: resident size of all the system's processes, at rest (after the runs) and with $IDLE_CONNECTIONS idle connections"
    printf '%-10s %10s %10s %10s %10s %10s %9s\n' system "rest RSS" "idle RSS" "idle PSS" processes connected greeted
    for sys in $SYSTEMS; do
        [ -n "${MEMORY[$sys]:-}" ] || continue
        read -r rest idle pss procs connected greeted <<<"${MEMORY[$sys]}"
        awk -v s="$sys" -v r="$rest" -v i="$idle" -v q="$pss" -v p="$procs" -v c="$connected" -v g="$greeted" \
            'BEGIN { printf "%-10s %7.1f MiB %6.1f MiB %6.1f MiB %10d %10d %9d\n", s, r / 1024, i / 1024, q / 1024, p, c, g }'
    done
fi

# Sanity: nothing left behind in either queue.
for sys in $SYSTEMS; do
    case $sys in
    postfix) left=$(postfix_queue_count "$T/postfix") ;;
    smarthost) left=$(find "$T/smarthost/data/spool/queue" -type f 2>/dev/null | wc -l) ;;
    *) continue ;;
    esac
    echo "$sys: $left file(s) left in its queue"
done
