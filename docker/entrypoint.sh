#!/bin/sh
# Validate first: a bad rule file stops the container with a readable error instead of
# a restart loop; then hand PID 1 to the daemon so it receives SIGTERM/SIGHUP.
set -eu
jfwatch check-config
exec jfwatch run "$@"
