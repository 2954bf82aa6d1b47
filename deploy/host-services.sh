#!/usr/bin/env bash
# Make sure the host's RabbitMQ, PostgreSQL and Redis answer before native mode or its tests run.
#
# Native mode (and `make test` without Docker) uses servers already on the machine. A broker can be
# left stopped by an interrupted chaos test (it runs `rabbitmqctl stop_app` and `start_app`), or
# wedged so that its port is open but no AMQP handshake completes. This script asks each server
# the way a client would (an AMQP protocol header, `pg_isready`, a Redis PING) and, as root, starts
# or restarts the one that does not answer, with the commands Debian's packages provide. It
# changes nothing on a machine whose servers answer, and as a non-root user it only reports.
#
# .ci/run calls it first; on a laptop with Docker none of this is needed (testcontainers).
set -uo pipefail

AMQP_HOST=${AMQP_HOST:-127.0.0.1}
AMQP_PORT=${AMQP_PORT:-5672}
root=$([ "$(id -u)" -eq 0 ] && echo yes || echo no)

say() { echo "host-services: $*"; }

amqp_answers() {  # the broker answers an AMQP 0-9-1 header with a Connection.Start method frame
    python3 - "$AMQP_HOST" "$AMQP_PORT" <<'EOF'
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
        s.settimeout(5)
        s.sendall(b"AMQP\x00\x00\x09\x01")
        frame = s.recv(7)
    sys.exit(0 if frame[:1] == b"\x01" else 1)
except OSError:
    sys.exit(1)
EOF
}

wait_for() {  # wait_for SECONDS CHECK...: true once CHECK succeeds within SECONDS
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 1
    done
}

status=0

# --- RabbitMQ -------------------------------------------------------------------------------
if amqp_answers; then
    say "RabbitMQ answers on $AMQP_HOST:$AMQP_PORT"
elif [ "$root" = yes ] && command -v rabbitmqctl >/dev/null 2>&1; then
    say "RabbitMQ does not answer; starting its application"
    # A node that runs with its application stopped (an interrupted chaos test) needs start_app.
    timeout 30 rabbitmqctl -q start_app >/dev/null 2>&1 || true
    if ! wait_for 30 amqp_answers; then
        say "still no answer; restarting the node"
        timeout 30 rabbitmqctl -q stop >/dev/null 2>&1 || true
        pkill -9 -u rabbitmq beam.smp 2>/dev/null || true
        pkill -9 -u rabbitmq epmd 2>/dev/null || true
        sleep 1
        # Debian's wrapper runs the node as the rabbitmq user when called as root.
        rabbitmq-server -detached >/dev/null 2>&1 || true
    fi
    if wait_for 90 amqp_answers; then
        say "RabbitMQ answers again"
    else
        say "RabbitMQ still does not answer on $AMQP_HOST:$AMQP_PORT" >&2
        status=1
    fi
else
    say "RabbitMQ does not answer on $AMQP_HOST:$AMQP_PORT (start it: rabbitmq-server -detached)" >&2
    status=1
fi

# --- PostgreSQL -----------------------------------------------------------------------------
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    say "PostgreSQL answers on 127.0.0.1:5432"
elif [ "$root" = yes ] && command -v pg_ctlcluster >/dev/null 2>&1; then
    say "PostgreSQL does not answer; starting it"
    for version in $(ls /etc/postgresql 2>/dev/null); do
        pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    done
    if wait_for 60 pg_isready -q -h 127.0.0.1 -p 5432; then
        say "PostgreSQL answers again"
    else
        say "PostgreSQL still does not answer" >&2
        status=1
    fi
else
    say "PostgreSQL does not answer on 127.0.0.1:5432" >&2
    status=1
fi

# --- Redis ----------------------------------------------------------------------------------
redis_answers() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }
if redis_answers; then
    say "Redis answers on 127.0.0.1:6379"
elif [ "$root" = yes ] && command -v redis-server >/dev/null 2>&1; then
    say "Redis does not answer; starting it"
    mkdir -p /var/log/redis /var/lib/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1 || true
    if wait_for 30 redis_answers; then
        say "Redis answers again"
    else
        say "Redis still does not answer" >&2
        status=1
    fi
else
    say "Redis does not answer on 127.0.0.1:6379" >&2
    status=1
fi

exit $status
