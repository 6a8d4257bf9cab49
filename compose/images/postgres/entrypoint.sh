#!/bin/sh
# First start: initdb into an empty PGDATA with the password from POSTGRES_PASSWORD and the
# database POSTGRES_DB owned by POSTGRES_USER, reachable over the network with scram only.
# Later starts: just the server. The password never lands on a command line.
set -eu
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set to initialise the database}"
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
  printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
    createdb --username="$user" --owner="$user" "$db"
    pg_ctl --pgdata="$PGDATA" --wait --silent stop
  fi
  echo "postgres-entrypoint: initialised $PGDATA (database $db, user $user)"
fi
exec "$@"
