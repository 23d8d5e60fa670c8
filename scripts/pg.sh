#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: `initdb` into a temporary folder, started as an
# unprivileged user on a free loopback port, with password (SCRAM) authentication so that a
# wrong password is a real refusal. Used by scripts/test.sh; also handy by hand.
#
#   scripts/pg.sh start DIR    create and start a cluster in DIR (must not exist); prints the
#                              URL `postgresql://tune@127.0.0.1:PORT/postgres` on stdout
#   scripts/pg.sh stop DIR     stop it (fast shutdown) and remove DIR
#   scripts/pg.sh restart DIR  restart it on the same port (fault tests)
#
# The role `tune` is a superuser with the password in DIR/password (tests create and drop their
# own databases). Needs Debian's postgresql package: scripts/setup.sh --deps installs it.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: scripts/pg.sh start|stop|restart DIR" >&2; exit 2; }

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "PostgreSQL server binaries not found under /usr/lib/postgresql: run scripts/setup.sh --deps" >&2
    exit 2
fi

# initdb and postgres refuse to run as root: run them as the `postgres` system user then.
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$cmd" in
start)
    [ ! -e "$dir" ] || { echo "$dir exists already; pick a new folder" >&2; exit 2; }
    mkdir -p "$dir"
    password=tune-test-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf '%s\n' "$password" > "$dir/password"
    if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; fi
    as_owner "$bindir/initdb" -D "$dir/data" -U tune --pwfile="$dir/password" \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 2; }
    port=$(free_port)
    echo "$port" > "$dir/port"
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$dir'"
        echo "max_connections = 300"
        # A test server: durability across an OS crash does not matter, speed does.
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
        echo "shared_buffers = 64MB"
    } >> "$dir/data/postgresql.conf"
    if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; fi
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null \
        || { cat "$dir/server.log" >&2; exit 2; }
    echo "postgresql://tune@127.0.0.1:$port/postgres"
    ;;
stop)
    if [ -d "$dir/data" ]; then
        as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
restart)
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart >/dev/null
    ;;
*)
    echo "usage: scripts/pg.sh start|stop|restart DIR" >&2
    exit 2
    ;;
esac
