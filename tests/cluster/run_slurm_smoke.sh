#!/usr/bin/env bash
# The smoke DAG through a real SLURM: a throwaway one-node cluster on localhost, the workflow run through
# snakemake-executor-plugin-slurm with tests/cluster/profile, the same config run locally beside it, and two checks:
#   (a) every job of the DAG but `all` ran as a SLURM job (tests/cluster/check.py jobs);
#   (b) summary.csv of the SLURM run equals the local run's on every result column (check.py summaries).
#
#   bash tests/cluster/run_slurm_smoke.sh [PYTHON]          # as root, on Debian/Ubuntu
#
# PYTHON (argument or environment variable): the interpreter whose environment has this package and Snakemake; the
#   plugin is pip-installed into it if missing. Default: the repository's .venv/bin/python, else python3.
# SNAKEMAKE_LIMIT: seconds allowed to each Snakemake run (default 600). KEEP_TMP=1: keep the temporary directory
#   (always kept after a failure). SLURM_SMOKE_TMPDIR: where to make it (default $TMPDIR or /tmp).
# Exit status: 0 passed; 77 skipped (not root, or SLURM / munge / the plugin could not be installed); else failed.
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge with apt-get when any of their programs is missing.
# Everything else lives in one temporary directory: slurm.conf (used through SLURM_CONF, never /etc/slurm, so no
# later `scontrol` on this machine finds a dead controller), a munge key and socket of its own, free TCP ports,
# state, logs and both work directories. munged, slurmctld and slurmd run in the foreground as background jobs of
# this script; the EXIT trap cancels the test cluster's jobs and stops exactly those PIDs (checking
# /proc/PID/comm first), on success, failure or interruption alike.
set -uo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER_DIR=$REPO/tests/cluster
CONFIG=$CLUSTER_DIR/smoke.yaml
PYTHON=${1:-${PYTHON:-}}
if [[ -z $PYTHON ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
LIMIT=${SNAKEMAKE_LIMIT:-600}
KEEP_TMP=${KEEP_TMP:-0}

now() { date +%s.%N; }
span() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[slurm-smoke %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "FAIL: $*"; exit 1; }
skip() { log "SKIP: $*"; exit 77; }

T_START=$(now)
T_INSTALL='' T_UP='' T_SLURM='' T_LOCAL=''  # durations, filled in as the steps finish
TMP=''                          # the temporary directory
PIDS=() COMMS=()                # the daemons this script started, in start order
CHILD=''                        # the running `timeout ... snakemake`, if any
LOCAL=''                        # the local run's `timeout ... snakemake`, while it runs beside the SLURM run

# ----------------------------------------------------------------------------------------------- teardown

alive() {  # PID COMM: the process exists, is not a zombie, and is still the program we started
    local state
    [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] || return 1
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $state != Z ]]
}

cancel_jobs() {  # every job of the test cluster (this script's own cluster: nobody else's jobs are in it)
    local i ids
    (( ${#PIDS[@]} >= 2 )) && alive "${PIDS[1]}" slurmctld || return 0
    ids=$(timeout 10 squeue -h -o %i 2>/dev/null) || return 0
    [[ -z $ids ]] && return 0
    log "cancelling the test cluster's jobs: $(echo $ids)"
    timeout 20 scancel $ids
    for i in $(seq 60); do  # up to 30 s for them to leave the queue and their processes to end
        if [[ -z $(timeout 10 squeue -h -t running,completing,configuring -o %i 2>/dev/null) && -z $(job_processes) ]]
        then
            return 0
        fi
        sleep 0.5
    done
    log "jobs still running after 30 s: $(timeout 10 squeue -h 2>&1) $(job_processes)"
}

job_processes() {  # PIDs working in the SLURM run's directory: the jobs' Snakemake and rule processes
    local d cwd
    for d in /proc/[0-9]*; do
        cwd=$(readlink "$d/cwd" 2>/dev/null) || continue
        [[ $cwd == "$TMP/slurm" || $cwd == "$TMP/slurm/"* ]] && printf '%s ' "${d#/proc/}"
    done
}

stop_daemons() {  # newest first: slurmd, slurmctld, munged
    local i pid comm
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]} comm=${COMMS[i]}
        if ! alive "$pid" "$comm"; then
            log "$comm (pid $pid) had already exited"
            wait "$pid" 2>/dev/null
            continue
        fi
        kill -TERM "$pid"
        for _ in $(seq 100); do alive "$pid" "$comm" || break; sleep 0.1; done
        if alive "$pid" "$comm"; then
            log "$comm (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
            kill -KILL "$pid"
        fi
        wait "$pid" 2>/dev/null
        log "stopped $comm (pid $pid)"
    done
    PIDS=() COMMS=()
}

tail_file() {  # FILE [LINES]
    [[ -s $1 ]] || return 0
    printf '\n----- last %s lines of %s -----\n' "${2:-40}" "$1"
    tail -n "${2:-40}" "$1"
}

show_logs() {
    local f
    [[ -n $TMP && -d $TMP ]] || return 0
    log "logs of the failed run (all kept in $TMP):"
    for f in apt.log pip.log srun.log dry-run.txt; do tail_file "$TMP/$f" 20; done
    for f in slurm.log local.log; do tail_file "$TMP/$f" 60; done
    for f in munged slurmctld slurmd; do tail_file "$TMP/log/$f.log" 30; tail_file "$TMP/log/$f.out" 15; done
    # the newest SLURM job logs and rule logs of both runs
    while read -r f; do tail_file "$f" 30; done < <(
        find "$TMP/slurm/.snakemake/slurm_logs" "$TMP/slurm/logs" "$TMP/local/logs" -type f -name '*.log' \
            -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n 4 | cut -d' ' -f2-)
    if (( ${#PIDS[@]} >= 2 )) && alive "${PIDS[1]}" slurmctld; then
        printf '\n----- squeue / sinfo -----\n'
        timeout 10 squeue -a -l; timeout 10 sinfo -N -l
    fi
}

on_exit() {
    local rc=$? t0 t_down
    trap - EXIT INT TERM HUP
    exec >&3 2>&4  # the script's own output, also when the signal came during a redirected command
    if [[ -n $CHILD ]]; then kill -TERM "$CHILD" 2>/dev/null; wait "$CHILD" 2>/dev/null; fi
    if [[ -n $LOCAL ]]; then kill -TERM "$LOCAL" 2>/dev/null; wait "$LOCAL" 2>/dev/null; fi
    (( rc != 0 && rc != 77 )) && show_logs
    t0=$(now)
    cancel_jobs
    stop_daemons
    t_down=$(span "$t0" "$(now)")
    log "timings (s): install+bring-up ${T_UP:--} (install ${T_INSTALL:--}) | SLURM DAG ${T_SLURM:--} |" \
        "local DAG ${T_LOCAL:--} | teardown $t_down | total $(span "$T_START" "$(now)")"
    if [[ -n $TMP && -d $TMP ]]; then
        if (( rc == 0 )) && [[ $KEEP_TMP != 1 ]]; then rm -rf -- "$TMP"; else log "kept $TMP"; fi
    fi
    case $rc in
        0) log "PASSED" ;;
        77) log "SKIPPED" ;;
        *) log "FAILED (exit $rc)" ;;
    esac
    exit "$rc"
}

on_signal() {
    log "interrupted by SIG$1"
    exit 1  # the EXIT trap stops Snakemake and the daemons
}

exec 3>&1 4>&2  # kept for on_exit; closed in the commands and daemons this script starts
trap on_exit EXIT
for sig in INT TERM HUP; do trap "on_signal $sig" "$sig"; done

run_limited() {  # SECONDS OUTPUT COMMAND...: in the background, so that a signal to this script interrupts the wait
    local limit=$1 out=$2 rc
    shift 2
    timeout -k 10 "$limit" "$@" >>"$out" 2>&1 3>&- 4>&- &
    CHILD=$!
    wait "$CHILD"
    rc=$?
    CHILD=''
    (( rc == 124 || rc == 137 )) && log "timed out after ${limit}s: $*"
    return "$rc"
}

# ----------------------------------------------------------------------------------------------- install

[[ $(id -u) == 0 ]] || skip "needs root (installs packages, runs the SLURM daemons)"
resolved=$(command -v "$PYTHON") || die "no Python interpreter '$PYTHON'"
PYTHON=$resolved
"$PYTHON" -c "import methods, snakemake" 2>/dev/null || die "$PYTHON lacks the methods package or Snakemake"

TMP=$(mktemp -d "${SLURM_SMOKE_TMPDIR:-${TMPDIR:-/tmp}}/slurm-smoke.XXXXXX") || die "mktemp failed"
chmod 755 "$TMP"  # munged wants every directory above its socket searchable by all
log "repository $REPO, python $PYTHON, temporary directory $TMP"

PROGRAMS=(slurmctld slurmd sbatch squeue scontrol sinfo srun scancel munged munge unmunge mungekey setpriv)
missing=()
for p in "${PROGRAMS[@]}"; do command -v "$p" >/dev/null || missing+=("$p"); done
if (( ${#missing[@]} )); then
    command -v apt-get >/dev/null || skip "SLURM/munge programs missing (${missing[*]}) and no apt-get"
    log "installing slurmctld slurmd slurm-client munge with apt-get (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -q >"$TMP/apt.log" 2>&1 || log "apt-get update failed; trying the install anyway"
    if ! timeout 600 apt-get install -y -q -o DPkg::Lock::Timeout=120 --no-install-recommends \
            slurmctld slurmd slurm-client munge >>"$TMP/apt.log" 2>&1; then
        tail -n 20 "$TMP/apt.log"
        skip "apt-get install of slurmctld slurmd slurm-client munge failed (no network to the mirror?)"
    fi
    for p in "${PROGRAMS[@]}"; do command -v "$p" >/dev/null || die "apt-get installed SLURM, yet $p is missing"; done
fi
id munge >/dev/null 2>&1 || die "no munge user (the munge package creates it)"

plugin_ok() {  # the plugin, recent enough to have the squeue status command the profile asks for
    timeout -k 10 60 "$PYTHON" -c "import dataclasses, snakemake_executor_plugin_slurm as p
assert 'status_command' in {f.name for f in dataclasses.fields(p.ExecutorSettings)}" 2>/dev/null
}
if ! plugin_ok; then
    log "installing snakemake-executor-plugin-slurm into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    if ! timeout 600 "$PYTHON" -m pip install -q "snakemake-executor-plugin-slurm>=2" >"$TMP/pip.log" 2>&1; then
        tail -n 20 "$TMP/pip.log"
        skip "pip could not install snakemake-executor-plugin-slurm (no network to the package index?)"
    fi
    plugin_ok || die "snakemake-executor-plugin-slurm installed but unusable (no slurm-status-command)"
fi
T_INSTALL=$(span "$T_START" "$(now)")
versions=$(timeout -k 10 60 "$PYTHON" -c 'import importlib.metadata as m
print(*(f"{p} {m.version(p)}" for p in ("snakemake", "snakemake-executor-plugin-slurm",
                                        "snakemake-executor-plugin-slurm-jobstep")), sep=", ")')
log "installed in $T_INSTALL s: $(dpkg-query -W -f '${Package} ${Version}' slurmctld 2>/dev/null), $versions"

# ----------------------------------------------------------------------------------------------- bring-up

mkdir -p "$TMP"/{bin,etc,munge,state,spool,run,log,slurm,local}
chown munge:munge "$TMP/munge"
# This cluster's own environment: its slurm.conf, and none of a surrounding SLURM job's variables.
while read -r v; do [[ $v == SLURM_* ]] && unset "$v"; done < <(compgen -e)
export SLURM_CONF=$TMP/etc/slurm.conf
# Inside each job, snakemake-executor-plugin-slurm-jobstep (0.6.1) runs the rule through `srun` with every SLURM_*
# variable but the job's identity removed, SLURM_CONF included: that srun finds no slurm.conf (it looks in
# /etc/slurm, then DNS) and the job fails. Jobs inherit PATH (--export=ALL), so an srun first on PATH that
# restores SLURM_CONF fixes it without writing to /etc. Real clusters keep slurm.conf where srun looks by itself.
printf '#!/bin/sh\nSLURM_CONF=%q exec %q "$@"\n' "$SLURM_CONF" "$(command -v srun)" >"$TMP/bin/srun"
chmod 755 "$TMP/bin/srun"
export PATH=$TMP/bin:$PATH

read -r CTLD_PORT SLURMD_PORT < <("$PYTHON" -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.85 }' /proc/meminfo)  # more than the node has: INVALID
cat >"$SLURM_CONF" <<EOF
# The cluster smoke test's one-node SLURM (tests/cluster/run_slurm_smoke.sh). No accounting, no cgroups.
ClusterName=smoke
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$TMP/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$TMP/state
SlurmdSpoolDir=$TMP/spool
SlurmctldPidFile=$TMP/run/slurmctld.pid
SlurmdPidFile=$TMP/run/slurmd.pid
SlurmctldLogFile=$TMP/log/slurmctld.log
SlurmdLogFile=$TMP/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
# The plugin's squeue status checks see a finished job only for MinJobAge seconds; below 3 × its initial delay
# (tests/cluster/profile: 1 s) it falls back to sacct, which fails here, and Snakemake waits forever.
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=smoke Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

start_daemon() {  # COMM LOG COMMAND...: in the foreground of a background job, so that $! is the daemon itself
    local comm=$1 out=$2
    shift 2
    "$@" >"$out" 2>&1 3>&- 4>&- &
    local pid=$! i
    PIDS+=("$pid") COMMS+=("$comm")
    # until the job has exec'd the daemon (through setpriv), /proc shows bash or setpriv: `alive` would call the
    # daemon dead (seen once on a loaded machine, munged's log showing a clean start)
    for i in $(seq 100); do
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] && break
        [[ -e /proc/$pid ]] || break
        sleep 0.05
    done
    log "started $comm (pid $pid)"
}

wait_until() {  # WHAT SECONDS COMMAND...: poll COMMAND until it succeeds; fail when the last daemon died
    local what=$1 limit=$2 last=$((${#PIDS[@]} - 1))
    local deadline=$((SECONDS + limit))
    shift 2
    until "$@"; do
        alive "${PIDS[last]}" "${COMMS[last]}" || die "$what: ${COMMS[last]} exited (its log is below)"
        (( SECONDS < deadline )) || die "$what: not ready within $limit s"
        sleep 0.2
    done
    log "$what"
}

munge_ok() { munge -n -S "$TMP/munge/munge.socket" 2>/dev/null | unmunge -S "$TMP/munge/munge.socket" >/dev/null 2>&1; }
ctld_ok() { timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_idle() {  # fails the script at once on a node state that will not become idle by itself
    local state
    state=$(timeout 5 sinfo -h -N -o %t 2>/dev/null) || return 1
    case $state in
        idle) return 0 ;;
        inval* | down* | drain* | fail*) die "the node is '$state': $(timeout 5 scontrol show node localhost)" ;;
        *) return 1 ;;
    esac
}

# Another run of this script that was killed hard may have left its daemons behind: harmless (other ports, other
# munge socket), and not ours to stop. Say so.
stale=$(pgrep -a -f "^(/usr/sbin/munged|slurmctld|slurmd) .*/slurm-smoke\.[A-Za-z0-9]{6}/" 2>/dev/null || true)
[[ -n $stale ]] && log "note: daemons of an earlier, interrupted run are still running (not stopped):"$'\n'"$stale"

setpriv --reuid=munge --regid=munge --init-groups mungekey --create --keyfile="$TMP/munge/munge.key" ||
    die "mungekey failed"
start_daemon munged "$TMP/log/munged.log" setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged \
    --foreground --socket="$TMP/munge/munge.socket" --key-file="$TMP/munge/munge.key" \
    --pid-file="$TMP/munge/munged.pid" --seed-file="$TMP/munge/munged.seed"  # logs to stderr in the foreground
wait_until "munge is up" 20 munge_ok
start_daemon slurmctld "$TMP/log/slurmctld.out" slurmctld -D -i -f "$SLURM_CONF"
wait_until "slurmctld is up (port $CTLD_PORT)" 30 ctld_ok
start_daemon slurmd "$TMP/log/slurmd.out" slurmd -D -N localhost -f "$SLURM_CONF"
wait_until "slurmd is up: node localhost idle ($CPUS CPUs, $MEM_MB MB)" 30 node_idle
run_limited 60 "$TMP/srun.log" srun -N 1 -n 1 -t 1 --mem 100 /bin/true ||
    die "srun /bin/true failed on the test cluster"
T_UP=$(span "$T_START" "$(now)")
log "cluster up, $T_UP s after the start (install included)"

# ----------------------------------------------------------------------------------------------- the two runs

SMK=("$PYTHON" -m snakemake --snakefile "$REPO/Snakefile" --configfile "$CONFIG")
run_limited 300 "$TMP/dry-run.txt" "${SMK[@]}" --directory "$TMP/slurm" -n --quiet rules all ||
    die "dry run of $CONFIG failed"

# The local run goes beside the SLURM run, on one core: the SLURM run spends most of its time waiting for status
# checks (the plugin's), so the two together take little more than the SLURM run alone. Every job is seeded and runs
# one thread, so the results do not depend on what runs beside them.
log "local run: snakemake --cores 1 in $TMP/local, beside the SLURM run (limit $LIMIT s)"
t_local=$(now)
( timeout -k 10 "$LIMIT" "${SMK[@]}" --directory "$TMP/local" --cores 1 all >>"$TMP/local.log" 2>&1 3>&- 4>&-
  rc=$?; echo "$(span "$t_local" "$(now)")" >"$TMP/local.seconds"; exit "$rc" ) &
LOCAL=$!

log "SLURM run: snakemake --profile tests/cluster/profile in $TMP/slurm (limit $LIMIT s)"
t0=$(now)
run_limited "$LIMIT" "$TMP/slurm.log" "${SMK[@]}" --directory "$TMP/slurm" --profile "$CLUSTER_DIR/profile" all ||
    die "the SLURM run failed"
T_SLURM=$(span "$t0" "$(now)")
log "SLURM run done in $T_SLURM s"

wait "$LOCAL"
rc=$?
LOCAL=''
T_LOCAL=$(cat "$TMP/local.seconds" 2>/dev/null)
(( rc == 0 )) || die "the local run failed (exit $rc; timed out if 124 or 137)"
log "local run done in $T_LOCAL s"

# ----------------------------------------------------------------------------------------------- checks

timeout -k 10 120 "$PYTHON" "$CLUSTER_DIR/check.py" jobs --dry-run "$TMP/dry-run.txt" --log "$TMP/slurm.log" \
    --workdir "$TMP/slurm" || die "(a) not every job ran under SLURM"
timeout -k 10 120 "$PYTHON" "$CLUSTER_DIR/check.py" summaries "$TMP/slurm/results/digits/summary.csv" \
    "$TMP/local/results/digits/summary.csv" || die "(b) the SLURM run's results differ from the local run's"
