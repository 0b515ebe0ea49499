#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for the tests and for trying the SLURM path on a
# laptop (Debian/Ubuntu, as root, no systemd needed).
#
#   scripts/local-slurm.sh start    install what is missing, start what is not running (idempotent)
#   scripts/local-slurm.sh status   which daemons run, and sinfo
#   scripts/local-slurm.sh stop     stop the daemons this script started (by their PID files)
#
# Daemons: munged, MariaDB (unix socket only, --skip-networking), slurmdbd (accounting: submitit
# polls job states with sacct), slurmctld, slurmd. Every address is 127.0.0.1. State, logs and
# PID files live in $GROKKING_SLURM_STATE (default /tmp/grokking-slurm); the config is written to
# /etc/slurm/slurm.conf, which clients such as sbatch read.
set -euo pipefail

STATE=${GROKKING_SLURM_STATE:-/tmp/grokking-slurm}
CONF_DIR=/etc/slurm
MARKER="# written by grokking scripts/local-slurm.sh"
STARTED=$STATE/started   # one PID file per daemon this script started
DB_SOCKET=/run/mysqld/mysqld.sock

log() { echo "local-slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up within ${seconds}s (logs in $STATE/log)"
}

install_packages() {
  local missing=()
  for pair in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client \
              slurmdbd:slurmdbd mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" -eq 0 ] || die "needs root to install ${missing[*]}"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: the slurm-wlm metapackage would pull 40+ packages
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_configs() {
  if [ -f $CONF_DIR/slurm.conf ] && ! grep -qF "$MARKER" $CONF_DIR/slurm.conf; then
    die "$CONF_DIR/slurm.conf exists and is not ours; refusing to overwrite it"
  fi
  mkdir -p "$STATE"/{log,ctld,d,mysql} "$STARTED" $CONF_DIR
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cat > $CONF_DIR/slurm.conf <<EOF
$MARKER
ClusterName=grokking
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat > $CONF_DIR/slurmdbd.conf <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 $CONF_DIR/slurmdbd.conf
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  [ -f /etc/munge/munge.key ] || mungekey --create
  chown munge:munge /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged test -f /run/munge/munged.pid
  cp /run/munge/munged.pid "$STARTED/munged.pid"
}

start_mariadb() {
  local run=$STATE/mariadb  # pid file and log: mariadbd runs as mysql and writes them itself
  if alive "$run/mariadb.pid"; then return; fi
  if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$STATE/mysql" >"$STATE/log/mariadb-install.log" 2>&1
  fi
  mkdir -p "$run" /run/mysqld
  chown -R mysql:mysql "$STATE/mysql" "$run" /run/mysqld
  # unix socket only: nothing listens on the network
  mariadbd --user=mysql --datadir="$STATE/mysql" --socket=$DB_SOCKET --skip-networking \
    --pid-file="$run/mariadb.pid" --log-error="$run/mariadb.log" 2>>"$run/mariadb.log" &
  wait_for 30 MariaDB mariadb --socket=$DB_SOCKET -e "SELECT 1"
  cp "$run/mariadb.pid" "$STARTED/mariadb.pid"
  mariadb --socket=$DB_SOCKET <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_daemon() {  # start_daemon NAME PIDFILE COMMAND...
  local name=$1 pidfile=$2; shift 2
  if alive "$pidfile"; then return; fi
  "$@"
  wait_for 30 "$name" alive "$pidfile"
  cp "$pidfile" "$STARTED/$name.pid"
}

start() {
  install_packages
  write_configs
  start_munge
  start_mariadb
  start_daemon slurmdbd "$STATE/slurmdbd.pid" slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -n list cluster format=cluster | grep -qw grokking || sacctmgr -i add cluster grokking >/dev/null
  start_daemon slurmctld "$STATE/slurmctld.pid" slurmctld
  start_daemon slurmd "$STATE/slurmd.pid" slurmd -N localhost
  wait_for 60 "the node" bash -c "sinfo -h -N -o %t | grep -qE '^(idle|mix|alloc)'"
  log "up: $(sinfo -h -o '%P %D %t %c cpus')"
}

stop() {
  local name pidfile pid
  for name in slurmd slurmctld slurmdbd mariadb munged; do
    pidfile=$STARTED/$name.pid
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      log "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
  done
}

status() {
  local name
  for name in munged mariadb slurmdbd slurmctld slurmd; do
    if [ "$name" = munged ]; then
      pgrep -x munged >/dev/null && echo "munged: running" || echo "munged: stopped"
    elif alive "$STARTED/$name.pid"; then echo "$name: running ($(cat "$STARTED/$name.pid"))"
    else echo "$name: stopped"; fi
  done
  sinfo 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
