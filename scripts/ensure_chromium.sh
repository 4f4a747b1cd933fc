#!/bin/sh
# The browser tests drive Debian's chromium through Playwright (Playwright's own browser download
# is not reachable everywhere). Installs it where it is missing and we can (root with apt-get);
# otherwise says the one command to run. Never fails setup: the browser tests fail instead,
# with the same message.
CHROMIUM="${PGFLOW_CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests (apt-get)"
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then
        exit 0
    fi
fi
echo "The browser tests need Debian's chromium at $CHROMIUM: sudo apt-get install -y chromium"
exit 0
