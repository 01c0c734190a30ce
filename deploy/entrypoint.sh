#!/bin/sh
# Entry point of the CPU image that Fly Machines run.
#
# Fly mounts a volume owned by root, while the node runs as the unprivileged user `moeswarm`. Started as
# root (as Fly starts it), this hands the data directory to that user, drops root for good, and starts
# the node in its place (exec), so that the node itself receives Fly's SIGTERM and can drain.
set -eu

run_as="${MOESWARM_RUN_AS:-moeswarm}"
data_dir="${MOESWARM_DATA_DIR:-/data}"

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$data_dir"
  if [ "$(stat -c %U "$data_dir")" != "$run_as" ]; then
    chown "$run_as:$(id -gn "$run_as")" "$data_dir"
  fi
  exec setpriv --reuid="$run_as" --regid="$(id -g "$run_as")" --init-groups --no-new-privs -- moe-swarm node "$@"
fi
exec moe-swarm node "$@"
