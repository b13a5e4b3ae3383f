# Sourced by the perf scripts that start their own target daemons (perf/ab-cpu, perf/strace-enters,
# perf/nbd-sparse-bench, perf/sheep-probe-bench): the one
# way they start ringtgtd or tgtd, pinned to a CPU, on a port the kernel chose (port 0) and read back through
# the admin tool, and stop every daemon they started. No guessed ports.
#
#   DAEMON_DIR=$(mktemp -d); trap 'stop_daemons; rm -rf "$DAEMON_DIR"' EXIT
#   start_daemon NAME BINDIR|tgt CPU [ARG...]
#                     sets DAEMON_PID, DAEMON_PORT (iSCSI) and DAEMON_ADMIN (the admin command, an array). CPU "-"
#                     leaves the daemon unpinned; ARGs go to ringtgtd after its own (e.g. --nbd, --export).
#   daemon_port LLD   the 127.0.0.1 port the daemon started last listens on for LLD (iscsi or nbd), from its admin
#                     tool; empty if none (e.g. NBD_PORT=$(daemon_port nbd) after --nbd portal=127.0.0.1:0)
#   stop_daemons      ringtgtd: SIGTERM, a bounded wait, then SIGKILL; tgtd (ignores SIGTERM): SIGKILL
#
# ringtgtd starts detached and returns once it serves (its own readiness pipe), so its first answer is final.
# tgtd has no readiness signal: its admin tool is asked, bounded, until it lists the portal with a real port.

DAEMON_TERM_PIDS=()
DAEMON_KILL_PIDS=()
# How long a daemon gets to list its portal, and to exit after SIGTERM.
DAEMON_READY_SECONDS=30
DAEMON_STOP_SECONDS=15

daemon_port() {
    "${DAEMON_ADMIN[@]}" --lld "$1" --op show --mode portal 2>/dev/null \
        | sed -n 's/^Portal: 127\.0\.0\.1:\([0-9]*\),.*/\1/p' | head -1 || true
}

start_daemon() {
    local name=$1 kind=$2 cpu=$3
    shift 3
    local pin=(taskset -c "$cpu")
    [ "$cpu" = - ] && pin=()
    if [ "$kind" = tgt ]; then
        # tgtd's control "port" names a unix socket (/var/run/tgtd/socket.N) and must stay below 32768.
        local ctl=$((20000 + ($$ * 8 + ${#DAEMON_KILL_PIDS[@]}) % 10000))
        "${pin[@]}" tgtd -f -C "$ctl" --iscsi portal=127.0.0.1:0 > "$DAEMON_DIR/$name.log" 2>&1 &
        DAEMON_PID=$!
        DAEMON_KILL_PIDS+=("$DAEMON_PID")
        DAEMON_ADMIN=(tgtadm -C "$ctl")
    else
        "${pin[@]}" "$kind/ringtgtd" --iscsi portal=127.0.0.1:0 --control-socket "$DAEMON_DIR/$name.ctl" --cores 1 \
            --pid-file "$DAEMON_DIR/$name.pid" "$@" > "$DAEMON_DIR/$name.log" 2>&1 \
            || { echo "$name: ringtgtd from $kind did not start:" >&2; cat "$DAEMON_DIR/$name.log" >&2; return 1; }
        DAEMON_PID=$(cat "$DAEMON_DIR/$name.pid")
        DAEMON_TERM_PIDS+=("$DAEMON_PID")
        DAEMON_ADMIN=("$kind/ringtgtadm" --control-socket "$DAEMON_DIR/$name.ctl")
    fi
    local deadline=$((SECONDS + DAEMON_READY_SECONDS))
    while :; do
        DAEMON_PORT=$(daemon_port iscsi)
        if [ -n "$DAEMON_PORT" ] && [ "$DAEMON_PORT" != 0 ]; then return 0; fi
        if ! kill -0 "$DAEMON_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            echo "$name did not list its portal within $DAEMON_READY_SECONDS s:" >&2
            cat "$DAEMON_DIR/$name.log" >&2
            return 1
        fi
        sleep 0.05   # the interval of a bounded poll (tgtd has no readiness signal), not synchronisation
    done
}

stop_daemons() {
    local p
    for p in "${DAEMON_KILL_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    for p in "${DAEMON_TERM_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${DAEMON_TERM_PIDS[@]}"; do
        timeout "$DAEMON_STOP_SECONDS" tail --pid="$p" -f /dev/null 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
    done
    DAEMON_KILL_PIDS=()
    DAEMON_TERM_PIDS=()
}
