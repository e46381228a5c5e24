#!/usr/bin/env bash
# Brings up a single-machine Slurm cluster (one node, one partition) for `pipe run --executor slurm`
# and its tests, without systemd: munged, slurmctld and slurmd are started directly, as the current
# user, with every file under one state directory. Idempotent: a cluster already up is left alone.
#
#   scripts/slurm-up.sh            # then: export SLURM_CONF=<state>/slurm.conf (printed; as root
#                                  # /etc/slurm/slurm.conf points at it, so plain `sinfo` works too)
#   PIPE_SLURM_STATE=/path scripts/slurm-up.sh   # state directory (default /tmp/pipe-slurm-$(id -u))
#
# Choices, for a container without systemd or a writable cgroup tree:
#   ProctrackType=proctrack/linuxproc, TaskPlugin=task/none  track job processes by parent pid, no cgroups
#   JobAcctGatherType=jobacct_gather/none, AccountingStorageType=accounting_storage/none
#       no slurmdbd, so no `sacct`: the executor reads job states from squeue and `scontrol show job`
#       (finished jobs stay visible there for MinJobAge seconds) plus the result file each job writes.
# As root, missing Debian packages (slurm-wlm, munge) are installed. A non-root user needs them
# installed already; the daemons then run as that user, which runs jobs as that user only.
set -euo pipefail

STATE=${PIPE_SLURM_STATE:-/tmp/pipe-slurm-$(id -u)}
CONF=$STATE/slurm.conf
NODE=$(hostname -s)
export SLURM_CONF=$CONF

say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: error: $*" >&2; exit 1; }

node_idle() { sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed, and installing them needs root (apt-get install slurm-wlm munge)"
  say "installing the Debian packages slurm-wlm and munge (missing)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

if alive "$STATE/munged.pid" && alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid" && node_idle; then
  say "already up (SLURM_CONF=$CONF)"
  exit 0
fi

mkdir -p "$STATE"/{ctld,spool,munge}
chmod 700 "$STATE/munge"
if [ ! -s "$STATE/munge/munge.key" ]; then
  mungekey --create --keyfile="$STATE/munge/munge.key" --force
  chmod 600 "$STATE/munge/munge.key"
fi

CPUS=$(nproc)
# Leave a tenth of the memory to the system and the daemons.
MEM_MB=$(( $(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) / 1024 * 9 / 10 ))
USER_NAME=$(id -un)
cat >"$CONF.tmp" <<CONF
# Written by scripts/slurm-up.sh: a single-machine cluster for pipe's Slurm executor.
ClusterName=pipe
SlurmctldHost=$NODE
SlurmUser=$USER_NAME
SlurmdUser=$USER_NAME
AuthType=auth/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$STATE/munge/munge.socket,cred_expire=30
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=${PIPE_SLURM_PORT:-6817}
SlurmdPort=$(( ${PIPE_SLURM_PORT:-6817} + 1 ))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
# A job whose BeginTime passed (a requeued one) waits for the next periodic pass: every 5 s, not 60.
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
# Finished jobs stay in slurmctld (scontrol show job) for an hour: without slurmdbd there is no sacct.
MinJobAge=3600
# Jobs cancelled by a node failure or preemption go back to the queue.
JobRequeue=1
KillWait=5
# Jobs run at the nice value of the process that submitted them (so "nice pipe run" keeps its jobs nice; no backquotes here: this heredoc expands them).
PropagatePrioProcess=1
# A job that asks for no memory gets its CPUs' share, not the whole node (which would serialize them).
DefMemPerCPU=$(( MEM_MB / CPUS ))
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
mv "$CONF.tmp" "$CONF"
if [ "$(id -u)" = 0 ]; then
  mkdir -p /etc/slurm
  ln -sfn "$CONF" /etc/slurm/slurm.conf
fi

# Stop what a previous, half-started attempt left running, then start afresh.
for d in slurmd slurmctld munged; do
  if alive "$STATE/$d.pid"; then kill "$(cat "$STATE/$d.pid")"; sleep 0.5; fi
done

munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
  --pid-file="$STATE/munged.pid" --log-file="$STATE/munged.log" --seed-file="$STATE/munge/munge.seed" \
  || die "munged did not start (see $STATE/munged.log)"
slurmctld -f "$CONF" || die "slurmctld did not start (see $STATE/slurmctld.log)"
slurmd -f "$CONF" || die "slurmd did not start (see $STATE/slurmd.log)"

for _ in $(seq 1 120); do
  if node_idle; then
    say "up: node $NODE ($CPUS CPUs, $MEM_MB MB), partition debug; export SLURM_CONF=$CONF"
    exit 0
  fi
  # A node that was down in a previous life comes back once slurmd registers.
  sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -Eq '^(down|drain)' && scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
  sleep 0.5
done
die "node $NODE did not become idle within 60 s: $(sinfo -h -n "$NODE" -o '%T %E' 2>&1); see $STATE/slurmctld.log and $STATE/slurmd.log"
