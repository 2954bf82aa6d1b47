#!/bin/sh
# Compose mode: keep nginx's upstream groups equal to the replicas Docker's DNS knows.
#
# Open-source nginx resolves the host names of an `upstream` block once, when it starts (the
# `resolve` parameter exists only from nginx 1.27.3), so `docker compose up --scale payment=3`
# would leave the gateway sending everything to the replicas it saw at start. This script, run
# by the official image's entrypoint before nginx starts, writes one file of `server` lines per
# service from the addresses Docker's DNS gives for the service name
# (/etc/nginx/upstreams/<service>.conf, included by the template through
# <SERVICE>_UPSTREAM_SERVERS), then keeps watching: when the set of addresses changes, it rewrites
# the file and reloads nginx gracefully (in-flight requests finish on the old workers). An
# upstream block, unlike a `proxy_pass` with a variable, keeps the pooled keep-alive connections
# and the passive circuit breaking (max_fails/fail_timeout) the gateway relies on.
#
#   SAGA_UPSTREAMS                 "service:port ..." (e.g. "order:8001 payment:8002")
#   SAGA_UPSTREAM_OPTIONS          appended to every server line (max_fails=3 fail_timeout=10s)
#   SAGA_UPSTREAM_REFRESH_SECONDS  how often DNS is asked again (default 3)
set -eu

dir=/etc/nginx/upstreams
options=${SAGA_UPSTREAM_OPTIONS:-max_fails=3 fail_timeout=10s}
refresh=${SAGA_UPSTREAM_REFRESH_SECONDS:-3}
[ -n "${SAGA_UPSTREAMS:-}" ] || exit 0
mkdir -p "$dir"

# Every IPv4 address of a name, sorted, one per line (glibc and musl getent, else nslookup).
addresses() {
    { getent ahostsv4 "$1" 2>/dev/null || getent hosts "$1" 2>/dev/null \
        || nslookup "$1" 2>/dev/null | sed -n 's/^Address[^:]*: *\([0-9.]*\)$/\1/p'; } \
        | awk '$1 ~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/ && $1 != "127.0.0.11" {print $1}' | sort -u
}

# Write <service>.conf for "service:port"; prints "changed" when its content changed. A name
# that resolves to nothing keeps its previous servers (a DNS hiccup must not empty the group);
# before the first answer the group holds one server marked down, so nginx answers 502 JSON.
render() {
    name=${1%%:*} port=${1##*:} file="$dir/${1%%:*}.conf"
    found=$(addresses "$name")
    if [ -z "$found" ]; then
        [ -f "$file" ] && return 0
        lines="server 127.0.0.1:$port down;"
    else
        lines=$(printf '%s\n' "$found" | sed "s/.*/server &:$port $options;/")
    fi
    if [ ! -f "$file" ] || [ "$(cat "$file")" != "$lines" ]; then
        printf '%s\n' "$lines" > "$file.new" && mv "$file.new" "$file"
        echo changed
    fi
}

for upstream in $SAGA_UPSTREAMS; do render "$upstream" >/dev/null; done
echo "$0: upstreams: $(cat "$dir"/*.conf | tr '\n' ' ')"

# The watcher outlives this script (the entrypoint execs nginx next).
(
    while sleep "$refresh"; do
        changed=
        for upstream in $SAGA_UPSTREAMS; do
            [ -z "$(render "$upstream")" ] || changed=yes
        done
        if [ -n "$changed" ] && nginx -t -q 2>/dev/null; then
            echo "$0: replicas changed, reloading nginx: $(cat "$dir"/*.conf | tr '\n' ' ')"
            nginx -s reload
        fi
    done
) &
