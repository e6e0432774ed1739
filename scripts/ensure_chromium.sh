#!/usr/bin/env bash
# The browser test drives Debian's headless Chromium. Install it when it is missing and we can
# (root with apt-get); otherwise say so: that one test then skips with this reason.
set -u
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian chromium for the browser test..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "WARNING: could not install chromium; the browser test will be skipped"
else
  echo "WARNING: chromium not installed and not root; the browser test will be skipped"
fi
exit 0
