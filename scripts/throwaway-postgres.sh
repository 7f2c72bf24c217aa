# Sourced by scripts/test and scripts/bench: starts a throwaway PostgreSQL cluster from the
# server binaries on PATH, exports DATABASE_URL, and removes the cluster on exit.
# PostgreSQL refuses to run as root, so as root the cluster belongs to `nobody`.

pg_bin_dir() {
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

start_throwaway_postgres() {
  local bin; bin=$(pg_bin_dir)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "PostgreSQL server binaries (initdb, pg_ctl) not found; install PostgreSQL 15" >&2
    exit 1
  fi
  PG_TMP=$(mktemp -d /tmp/jobcast-pg.XXXXXX)
  chmod 755 "$PG_TMP"
  local as=()
  if [ "$(id -u)" = 0 ]; then chown nobody "$PG_TMP"; as=(runuser -u nobody --); fi
  PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "${as[@]}" "$bin/initdb" -D "$PG_TMP/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
  "${as[@]}" "$bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=1000 ${PG_EXTRA_OPTS:-}" \
    start >/dev/null
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  PG_STOP=("${as[@]}" "$bin/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop)
  trap 'stop_throwaway_postgres' EXIT
  echo "throwaway PostgreSQL on port $PG_PORT ($PG_TMP)" >&2
}

stop_throwaway_postgres() {
  "${PG_STOP[@]}" >/dev/null 2>&1 || true
  rm -rf "$PG_TMP"
}
