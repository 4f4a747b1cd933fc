#!/bin/sh
# The pooler tests start Debian's pgbouncer in transaction mode in front of the test server.
# Installs it where it is missing and we can (root with apt-get); otherwise says the one command
# to run. Never fails setup: the pooler tests fail instead, with the same message.
PGBOUNCER="${PGFLOW_PGBOUNCER:-/usr/sbin/pgbouncer}"
[ -x "$PGBOUNCER" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's pgbouncer for the pooler tests (apt-get)"
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; then
        exit 0
    fi
fi
echo "The pooler tests need Debian's pgbouncer at $PGBOUNCER: sudo apt-get install -y pgbouncer"
exit 0
