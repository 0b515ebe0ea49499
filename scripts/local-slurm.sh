#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for the tests and for trying the SLURM path on a
# laptop (Debian/Ubuntu, as root, no systemd needed).
#
#   scripts/local-slurm.sh start    install what is missing, start what is not running (idempotent);
#                                   its last line is the `export SLURM_CONF=...` clients need;
#                                   jobs that were running when the node went down are requeued
#   scripts/local-slurm.sh env      print that line: eval "$(scripts/local-slurm.sh env)"
#   scripts/local-slurm.sh status   which daemons run, and sinfo
#   scripts/local-slurm.sh stop     stop the daemons this script started
#
# Daemons: munged, MariaDB (a unix socket only), slurmdbd (accounting: submitit polls job states
# with sacct), slurmctld, slurmd. The SLURM daemons listen on 127.0.0.1 only. Nothing is read
# from or written to /etc/slurm: the cluster lives in $STATE, and clients find its slurm.conf
# through SLURM_CONF. Folders that are not exactly as below (a symlink, another owner or mode)
# are refused, since root trusts what is in them.
#
# $STATE = $GROKKING_SLURM_STATE or /var/lib/grokking-slurm
#   (root 0755: clients read slurm.conf, jobs run their scripts from spool/)
#   slurm.conf      0644
#   slurmdbd.conf   0600  holds the database password
#   spool/          root 0755   slurmd's spool
#   private/        root 0700   controller state, logs, PID files, the database password, and
#                               started/: what this script started, the only processes it stops
#   mariadb/        mysql 0700  datadir, socket and log of the accounting database
set -euo pipefail
umask 022  # the same modes whatever umask sudo passes on; secrets get theirs explicitly

STATE=${GROKKING_SLURM_STATE:-/var/lib/grokking-slurm}
PRIVATE=$STATE/private
STARTED=$PRIVATE/started
DB=$STATE/mariadb
DB_SOCKET=$DB/mysqld.sock
export SLURM_CONF=$STATE/slurm.conf
CTLD_PORT=6817
SLURMD_PORT=6818
DBD_PORT=6819

log() { echo "local-slurm: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  local deadline=$((SECONDS + seconds))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      die "$what did not come up within ${seconds}s (logs in $PRIVATE/log and $DB)"
    fi
    sleep 0.1
  done
}

install_packages() {
  local missing=()
  for pair in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client \
    slurmdbd:slurmdbd mariadbd:mariadb-server ss:iproute2; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: the slurm-wlm metapackage would pull 40+ packages
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

check_dir() { # check_dir USER MODE PATH: refuse a folder someone else could have planted or write to
  local user=$1 mode=$2 dir=$3
  if [ -L "$dir" ]; then die "$dir is a symlink; refusing to use it"; fi
  if [ ! -d "$dir" ] || [ "$(stat -c '%U %a' "$dir")" != "$user $mode" ]; then
    die "$dir is not a directory owned by $user with mode $mode; refusing to use it"
  fi
}

ensure_dir() { # ensure_dir USER MODE PATH: create it so if it is missing, then check it
  [ -e "$3" ] || [ -L "$3" ] || install -d -m "$2" -o "$1" -g "$1" "$3"
  check_dir "$@"
}

write_file() { # write_file MODE PATH < CONTENT: readable by others only once complete, if ever
  local tmp
  tmp=$(mktemp "$2.XXXXXX") # created 0600
  cat >"$tmp"
  chmod "$1" "$tmp"
  mv -f "$tmp" "$2"
}

# A PID alone may belong to another process by now (PIDs are reused, and $STATE survives reboots):
# a process is recorded and recognised by its PID and its start time.
identity() { # identity PID -> "PID START_TIME", or fails if no such process runs (zombies don't)
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  read -ra fields <<<"${stat##*) }" # fields 3... of proc(5), after "(comm) ", which may hold spaces
  [ "${fields[0]}" != Z ] || return 1
  echo "$1 ${fields[19]}" # field 22: start time
}

record() { # record NAME PID
  identity "$2" >"$STARTED/$1" || die "$1 exited right after starting (logs in $PRIVATE/log)"
}

alive() { # alive NAME: the process this script recorded under NAME still runs
  [ -f "$STARTED/$1" ] && [ "$(identity "$(cut -d' ' -f1 "$STARTED/$1")")" = "$(cat "$STARTED/$1")" ]
}

check_ports() { # a taken port would kill a daemon midway, with a less clear message
  local pair taken
  for pair in slurmdbd:$DBD_PORT slurmctld:$CTLD_PORT slurmd:$SLURMD_PORT; do
    if alive "${pair%%:*}"; then continue; fi
    taken=$(ss -Hltnp "sport = :${pair#*:}" | tr -s ' ')
    [ -z "$taken" ] || die "port ${pair#*:} is taken (an older cluster?): $taken"
  done
}

db_password() { # generated once, kept in the private folder
  local file=$PRIVATE/db-password
  [ -s "$file" ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | write_file 600 "$file"
  cat "$file"
}

write_configs() {
  local cpus mem_mb password
  # nproc alone obeys OMP_NUM_THREADS (often 1 on clusters and in the tests), not the machine
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  password=$(db_password)
  # NoCtldInAddrAny/NoInAddrAny: bind to the address the host name resolves to instead of all
  # interfaces; the daemons run with the host name localhost (see start_daemon).
  write_file 644 "$SLURM_CONF" <<EOF
ClusterName=grokking
SlurmctldHost=localhost(127.0.0.1)
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$PRIVATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$PRIVATE/slurmctld.pid
SlurmdPidFile=$PRIVATE/slurmd.pid
SlurmctldLogFile=$PRIVATE/log/slurmctld.log
SlurmdLogFile=$PRIVATE/log/slurmd.log
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
AccountingStoragePort=$DBD_PORT
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  # slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF
  write_file 600 "$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
CommunicationParameters=NoInAddrAny
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$PRIVATE/slurmdbd.pid
LogFile=$PRIVATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$password
StorageLoc=slurm_acct_db
EOF
}

make_dirs() { # the database's folder comes later: its owner, mysql, comes with mariadb-server
  ensure_dir root 755 "$STATE"
  ensure_dir root 755 "$STATE/spool"
  ensure_dir root 700 "$PRIVATE"
  ensure_dir root 700 "$STARTED"
  ensure_dir root 700 "$PRIVATE/log"
  ensure_dir root 700 "$PRIVATE/ctld"
}

check_records() { # the folders stop and status trust for what this script started
  check_dir root 755 "$STATE"
  check_dir root 700 "$PRIVATE"
  check_dir root 700 "$STARTED"
}

munge_answers() { munge -n </dev/null >/dev/null 2>&1; }

start_munge() {
  if alive munged || munge_answers; then return; fi
  # the system's munged (clients of any user reach its socket); the key is a secret from birth
  [ -f /etc/munge/munge.key ] || (umask 077 && mungekey --create)
  chown munge:munge /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged test -s /run/munge/munged.pid
  record munged "$(cat /run/munge/munged.pid)"
}

db() { mariadb --no-defaults --socket="$DB_SOCKET" "$@"; }

start_mariadb() {
  if alive mariadb; then return; fi
  if [ ! -d "$DB/data/mysql" ]; then
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB/data" \
      >"$PRIVATE/log/mariadb-install.log" 2>&1
  fi
  # --no-defaults: the system's my.cnf (ports, sockets, datadir) plays no part
  mariadbd --no-defaults --user=mysql --datadir="$DB/data" --socket="$DB_SOCKET" \
    --skip-networking --pid-file="$DB/mariadbd.pid" --log-error="$DB/mariadbd.log" \
    </dev/null >/dev/null 2>&1 &
  record mariadb $!
  wait_for 30 MariaDB db -e "SELECT 1"
  # on stdin, so that the password never shows in a process list
  db <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$(db_password)';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

# With NoInAddrAny a daemon binds to what its host name resolves to; in a UTS namespace of its
# own that name is localhost, so it listens on 127.0.0.1 whatever this machine is called.
start_daemon() { # start_daemon NAME PIDFILE COMMAND...
  local name=$1 pidfile=$2
  shift 2
  if alive "$name"; then return; fi
  rm -f "$pidfile"
  unshare --uts sh -c 'hostname localhost && exec "$@"' sh "$@"
  wait_for 30 "$name" test -s "$pidfile"
  record "$name" "$(cat "$pidfile")"
}

start() {
  make_dirs
  install_packages
  ensure_dir mysql 700 "$DB"
  check_ports
  write_configs
  start_munge
  start_mariadb
  # the client library finds the database's socket through MYSQL_UNIX_PORT
  start_daemon slurmdbd "$PRIVATE/slurmdbd.pid" \
    env MYSQL_UNIX_PORT="$DB_SOCKET" slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  if ! sacctmgr -n list cluster format=cluster | grep -qw grokking; then
    sacctmgr -i add cluster grokking >/dev/null
  fi
  start_daemon slurmctld "$PRIVATE/slurmctld.pid" slurmctld
  local node_was_down=1
  alive slurmd && node_was_down=0
  start_daemon slurmd "$PRIVATE/slurmd.pid" slurmd -N localhost
  wait_for 60 "the node" bash -c "sinfo -h -N -o %t | grep -qE '^(idle|mix|alloc)'"
  [ $node_was_down -eq 0 ] || requeue_lost_jobs
  log "up: $(sinfo -h -o '%P %D %t %c cpus')"
  print_env
}

# The controller recovers its jobs from its saved state. One it saved as running whose job step
# is gone (the machine restarted, or the steps were killed while the node was down) would hold
# its cores for good, and the jobs behind it would wait for ever: requeue it (a run of this
# project resumes from its checkpoint), or cancel it where it cannot be requeued.
requeue_lost_jobs() {
  local job
  for job in $(squeue -h -t RUNNING -o %A); do
    if pgrep -f "^slurmstepd: \[$job\." >/dev/null; then continue; fi
    if scontrol requeue "$job" 2>/dev/null; then
      log "job $job was running when the node went down: requeued"
    elif scancel "$job"; then
      log "job $job was running when the node went down and cannot be requeued: cancelled"
    fi
  done
}

stop() {
  local name pid
  [ -e "$STATE" ] || return 0
  check_records
  for name in slurmd slurmctld slurmdbd mariadb munged; do
    if alive "$name"; then
      pid=$(cut -d' ' -f1 "$STARTED/$name")
      kill "$pid"
      for _ in $(seq 100); do
        alive "$name" || break
        sleep 0.1
      done
      alive "$name" && kill -9 "$pid"
      log "stopped $name ($pid)"
    fi
    rm -f "$STARTED/$name"
  done
}

status() {
  local name
  [ ! -e "$STATE" ] || check_records
  for name in munged mariadb slurmdbd slurmctld slurmd; do
    if alive "$name"; then
      echo "$name: running ($(cut -d' ' -f1 "$STARTED/$name"))"
    elif [ "$name" = munged ] && munge_answers; then
      echo "munged: running (not started by this script)"
    else
      echo "$name: stopped"
    fi
  done
  if alive slurmctld; then sinfo; fi # without it, sinfo would wait for its timeout
}

print_env() { echo "export SLURM_CONF=$SLURM_CONF"; }

case "${1:-}" in
  start | stop | status) [ "$(id -u)" -eq 0 ] || die "$1 needs root" ;;&
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) print_env ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
