#!/usr/bin/env bash
# The distributed-path tests (tests/integration/test_celery.py) start their own Redis broker on a
# free loopback port, so they need the redis-server binary (not a running service). Install it when
# it is missing and we can (root with apt-get); otherwise say so: those tests then skip with this reason.
set -u
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian redis-server for the distributed-path tests..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
    || echo "WARNING: could not install redis-server; the distributed-path tests will be skipped"
else
  echo "WARNING: redis-server not installed and not root; the distributed-path tests will be skipped"
fi
exit 0
