#!/usr/bin/env bash
# Stops the single-machine cluster scripts/slurm-up.sh started (same PIPE_SLURM_STATE), cancelling its jobs.
set -euo pipefail
STATE=${PIPE_SLURM_STATE:-/tmp/pipe-slurm-$(id -u)}
export SLURM_CONF=$STATE/slurm.conf
[ -f "$SLURM_CONF" ] && scancel --user="$(id -un)" >/dev/null 2>&1 || true
for d in slurmd slurmctld munged; do
  pidfile=$STATE/$d.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "slurm-down: stopped $d (pid $pid)"
  fi
  rm -f "$pidfile"
done
