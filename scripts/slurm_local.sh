#!/usr/bin/env bash
# Bring up / tear down a real SLURM cluster on this machine, for tests and CI
# (Debian/Ubuntu, run as root, works without systemd): one node by default, or
# GENBENCH_SLURM_NODES nodes, each its own slurmd on this machine.
#
#   scripts/slurm_local.sh up       install if needed, start, wait until a job runs
#   scripts/slurm_local.sh env      print the export line(s):  eval "$(scripts/slurm_local.sh env)"
#   scripts/slurm_local.sh status   sinfo + squeue; exit 0 if up, 1 if down
#   scripts/slurm_local.sh down     cancel jobs, stop every daemon; keeps config and state
#   scripts/slurm_local.sh purge    down, then delete the whole directory
#
# Everything (slurm.conf, cgroup.conf, controller state, slurmd spool, logs,
# munge key/socket/pid/log) lives under one directory, so several checkouts or
# CI jobs never touch /etc/slurm or /etc/munge, and `down` + `up` resumes from
# the saved state (job ids continue).  Clients need only SLURM_CONF: the munge
# socket is named in slurm.conf (AuthInfo=socket=...) and sbatch passes
# SLURM_CONF on to the job's environment.
#
# Environment:
#   GENBENCH_SLURM_DIR    root directory (default /tmp/genbench-slurm)
#   GENBENCH_SLURM_PORT   slurmctld port; the slurmd of node i uses PORT+i (default 6817)
#   GENBENCH_SLURM_NODES  number of nodes (default 1).  One node is named after
#                         this host; with more, n1, n2, ... are as many slurmd
#                         daemons on this machine (`slurmd -N n1`, SLURM's
#                         multiple-slurmd support; Debian's build has it), each
#                         with its own port, spool, pid file and log, and each
#                         offering all of this machine's CPUs.  Their names do
#                         not resolve: jobs reach node n1 at 127.0.0.1
#                         (MASTER_ADDR=127.0.0.1 for a multi-node DDP job).
#                         Use a separate GENBENCH_SLURM_DIR and PORT per size.
#   GENBENCH_SLURM_UP_TIMEOUT  seconds to wait for a job to run (default 60)
#
# Exit codes: 0 ok; 1 failure (logs are printed); 2 this environment cannot run
# SLURM (not root, no apt-get, install failed), so tests can skip with the reason.
set -euo pipefail

# Absolute: every path in slurm.conf must be.
DIR="$(realpath -m "${GENBENCH_SLURM_DIR:-/tmp/genbench-slurm}")"
PORT="${GENBENCH_SLURM_PORT:-6817}"
UP_TIMEOUT="${GENBENCH_SLURM_UP_TIMEOUT:-60}"
CONF="$DIR/etc/slurm.conf"
MUNGE_SOCKET="$DIR/munge/run/munge.socket"
RUN="$DIR/run"
LOG="$DIR/log"
NNODES="${GENBENCH_SLURM_NODES:-1}"
[[ $NNODES =~ ^[1-9][0-9]*$ ]] || { echo "slurm_local: GENBENCH_SLURM_NODES must be a positive integer, got '$NNODES'" >&2; exit 64; }
if ((NNODES == 1)); then
    NODES=("$(hostname -s)")
else
    NODES=()
    for ((i = 1; i <= NNODES; i++)); do NODES+=("n$i"); done
fi
NODE_LIST="$(IFS=,; echo "${NODES[*]}")"

die() { echo "slurm_local: $*" >&2; exit 1; }
unavailable() { echo "slurm_local: unavailable: $*" >&2; exit 2; }
log() { echo "slurm_local: $*" >&2; }

env_lines() {
    printf 'export SLURM_CONF=%q\n' "$CONF"
}

# ------------------------------------------------------------------ install --

have_binaries() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v sbatch >/dev/null && command -v munged >/dev/null
}

install_packages() {
    have_binaries && return 0
    command -v apt-get >/dev/null ||
        unavailable "slurm/munge are not installed and apt-get is missing"
    local policy=/usr/sbin/policy-rc.d backup=""
    # Without systemd the packages' init scripts would start daemons with the
    # system-wide config (and fail or grab the ports); exit 101 = "not allowed".
    if [[ -e $policy ]]; then
        backup="$(mktemp /usr/sbin/policy-rc.d.genbench.XXXXXX)"
        cp -p "$policy" "$backup"
    fi
    # shellcheck disable=SC2064  # expand now: the trap must restore this backup
    trap "restore_policy '$backup'" EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    local pkgs=(slurm-wlm munge) rc=0
    export DEBIAN_FRONTEND=noninteractive
    log "installing ${pkgs[*]} with apt-get"
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null ||
        ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$LOG/apt.log" 2>&1; then
        log "apt-get install failed or no package lists; running apt-get update"
        { apt-get update -q && apt-get install -y -q --no-install-recommends "${pkgs[@]}"; } \
            >>"$LOG/apt.log" 2>&1 || rc=$?
    fi
    restore_policy "$backup"
    trap - EXIT
    if ((rc != 0)) || ! have_binaries; then
        tail -n 30 "$LOG/apt.log" >&2
        unavailable "could not install ${pkgs[*]} (see $LOG/apt.log)"
    fi
}

restore_policy() {
    local backup="$1" policy=/usr/sbin/policy-rc.d
    if [[ -n $backup && -e $backup ]]; then
        mv -f "$backup" "$policy"
    else
        rm -f "$policy"
    fi
}

# ------------------------------------------------------------------- config --

write_config() {
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$RUN" "$LOG" "$DIR/munge/run"
    local n
    for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/$n"; done
    # munged rejects a socket directory that others cannot traverse, and a key
    # readable by anyone but its owner.
    chmod 755 "$DIR" "$DIR/munge" "$DIR/munge/run"
    chmod 700 "$DIR/state" "$DIR/spool" "$DIR/spool/"*
    if [[ ! -s $DIR/munge/munge.key ]]; then
        (umask 077 && dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none)
    fi
    chmod 600 "$DIR/munge/munge.key"

    # The node's real CPU count and memory (as slurmd itself detects them), so
    # it validates when slurmd registers; more memory than detected would drain
    # it ("Low RealMemory").  Only CPUs, no sockets/cores/threads: with
    # CR_CPU_Memory every hyperthread is then a schedulable CPU, so CI runners
    # with SMT run as many 1-CPU jobs at once as they have vCPUs.
    local hw cpus mem
    hw="$(slurmd -C 2>/dev/null | head -n1 || true)"
    cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
    mem="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
    [[ -n $cpus ]] || cpus="$(nproc --all)"
    [[ -n $mem ]] || mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024))

    local new="$CONF.new"
    cat >"$new" <<EOF
# Generated by scripts/slurm_local.sh; regenerated on each 'up' from cold.
ClusterName=genbench
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$PORT
AuthType=auth/munge
CredType=cred/munge
# Clients and daemons find our private munged here.  cred_expire also sets how
# long a requeued job is held (Reason=BeginTime); the default 120 s slows tests.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
# %n: the node's name, so several slurmd on this machine keep apart.
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups, no accounting daemon: works in containers and without systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
# Consumable CPUs and memory; without DefMemPerCPU each job is given the whole
# node's memory and jobs run one at a time.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
# Short timers so tests are quick.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=30
KillWait=2
Waittime=0
InactiveLimit=0
# A node that was down (e.g. slurmd restarted) comes back by itself.
ReturnToService=2
# Preemption, as on shared clusters: a job of the high-priority partition "urgent" that needs
# the node preempts running jobs of "debug", which SLURM signals (SIGTERM) and requeues
# (observed: ~3 s after the SIGTERM; GraceTime did not extend it with PreemptMode=REQUEUE).
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
EOF
    # One line per node; all on this host (NodeHostname) and reached on loopback, each slurmd
    # on its own port.
    local i
    for i in "${!NODES[@]}"; do
        echo "NodeName=${NODES[i]} NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((PORT + 1 + i))" \
            "CPUs=$cpus RealMemory=$mem State=UNKNOWN" >>"$new"
    done
    cat >>"$new" <<EOF
PartitionName=debug Nodes=$NODE_LIST Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=20
PartitionName=urgent Nodes=$NODE_LIST MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
    mv -f "$new" "$CONF"
    # slurmd 22.05 always loads a cgroup plugin even with the plugins above;
    # autodetection fails on hybrid or unmounted /sys/fs/cgroup, v1 loads anyway.
    printf '%s\n' '# Generated by scripts/slurm_local.sh' 'CgroupPlugin=cgroup/v1' \
        >"$DIR/etc/cgroup.conf"
}

# ------------------------------------------------------------------ daemons --

# A zombie counts as dead: where PID 1 does not reap orphans (containers, this
# VM) a stopped daemon stays a zombie and `kill -0` would still succeed.
proc_alive() { # pid
    local state
    state="$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

pid_alive() { # pidfile
    local pid
    [[ -s $1 ]] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ $pid =~ ^[0-9]+$ ]] && proc_alive "$pid"
}

munged_pidfile() { echo "$DIR/munge/run/munged.pid"; }

start_munged() {
    pid_alive "$(munged_pidfile)" && return 0
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    munged 9>&- \
        --socket="$MUNGE_SOCKET" \
        --key-file="$DIR/munge/munge.key" \
        --pid-file="$(munged_pidfile)" \
        --log-file="$LOG/munged.log" \
        --seed-file="$DIR/munge/munged.seed" ||
        { tail -n 20 "$LOG/munged.log" >&2 || true; die "munged failed to start"; }
}

start_slurmctld() {
    pid_alive "$RUN/slurmctld.pid" && return 0
    # Without -c the controller recovers jobs and node state from StateSaveLocation.
    env SLURM_CONF="$CONF" slurmctld -f "$CONF" 9>&- ||
        { dump_logs; die "slurmctld failed to start"; }
}

slurmd_pidfile() { echo "$RUN/slurmd-$1.pid"; } # node

start_slurmd() {
    local n
    for n in "${NODES[@]}"; do
        pid_alive "$(slurmd_pidfile "$n")" && continue
        env SLURM_CONF="$CONF" slurmd -f "$CONF" -N "$n" 9>&- ||
            { dump_logs; die "slurmd of node $n failed to start"; }
    done
}

any_slurmd_alive() {
    local n
    for n in "${NODES[@]}"; do pid_alive "$(slurmd_pidfile "$n")" && return 0; done
    return 1
}

dump_logs() {
    local f
    for f in "$LOG"/munged.log "$LOG"/slurmctld.log "$LOG"/slurmd*.log; do
        [[ -f $f ]] || continue
        echo "----- tail $f" >&2
        tail -n 40 "$f" >&2
    done
}

all_running() {
    pid_alive "$(munged_pidfile)" && pid_alive "$RUN/slurmctld.pid" || return 1
    local n
    for n in "${NODES[@]}"; do pid_alive "$(slurmd_pidfile "$n")" || return 1; done
}

# The state of every node, one word: the state they share, or "mixed:<states>".
node_state() {
    local states
    states="$(SLURM_CONF="$CONF" timeout 10 sinfo -h -N -n "$NODE_LIST" -o '%t' 2>/dev/null | sort -u || true)"
    case "$(wc -l <<<"$states")" in
    1) echo "$states" ;;
    *) echo "mixed:${states//$'\n'/,}" ;;
    esac
}

# Wait until the node is usable; with run_job, prove it by running a job step
# (a restarted slurmctld reports the saved node state before slurmd is back).
wait_ready() { # run_job(0/1)
    local deadline=$((SECONDS + UP_TIMEOUT)) state=""
    while ((SECONDS < deadline)); do
        all_running || { dump_logs; die "a daemon exited during start-up"; }
        state="$(node_state)"
        case "$state" in
        idle | mix | alloc | comp) break ;;
        esac
        sleep 0.5
    done
    case "$state" in
    idle | mix | alloc | comp) ;;
    *) dump_logs; die "nodes $NODE_LIST not ready after ${UP_TIMEOUT}s (state: '${state:-no answer}')" ;;
    esac
    (($1)) || return 0
    # Retry: after an unclean stop the controller may reuse a job id whose
    # credential slurmd still holds as revoked, and that one attempt fails.
    # One task on every node: each slurmd must really run a job step.
    local left
    while :; do
        left=$((deadline - SECONDS))
        ((left > 5)) || left=5
        SLURM_CONF="$CONF" timeout "$left" \
            srun -N"$NNODES" -n"$NNODES" --mem=16 -t 1 -J genbench-up-check true 2>>"$LOG/up-check.log" && return 0
        ((SECONDS < deadline)) || break
        sleep 1
    done
    dump_logs
    tail -n 20 "$LOG/up-check.log" >&2
    die "srun -N$NNODES true did not succeed within ${UP_TIMEOUT}s"
}

cmd_up() {
    # Unix socket paths are limited to 108 bytes.
    ((${#MUNGE_SOCKET} < 100)) || unavailable "GENBENCH_SLURM_DIR is too long for a socket path: $DIR"
    mkdir -p "$LOG"
    if have_binaries && all_running; then
        wait_ready 0
        env_lines
        return 0
    fi
    local t0=$SECONDS
    install_packages
    local cold=0
    if ! pid_alive "$RUN/slurmctld.pid" && ! any_slurmd_alive; then
        cold=1
        # Steps orphaned by a crash would confuse the restarted daemons.
        kill_leftovers
        # Regenerate only from cold so running daemons never see a changed config.
        write_config
    fi
    start_munged
    start_slurmctld
    start_slurmd
    wait_ready 0
    # `down` ends every job, so a job recovered from the saved state as
    # running is a ghost of a crash; without this it holds its CPUs forever.
    if ((cold)); then
        local ghosts
        ghosts="$(SLURM_CONF="$CONF" squeue -h -t RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null || true)"
        if [[ -n $ghosts ]]; then
            log "cancelling jobs left running by a crash: ${ghosts//$'\n'/ }"
            # shellcheck disable=SC2086
            SLURM_CONF="$CONF" scancel $ghosts 2>/dev/null || true
        fi
    fi
    wait_ready 1
    log "up in $((SECONDS - t0))s (dir $DIR)"
    env_lines
}

# Signal the pid in a pid file, wait for it to exit, SIGKILL if it lingers.
stop_pidfile() { # pidfile name
    local pid i
    pid_alive "$1" || { rm -f "$1"; return 0; }
    pid="$(cat "$1")"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        proc_alive "$pid" || break
        sleep 0.1
    done
    if proc_alive "$pid"; then
        log "$2 ($pid) ignored SIGTERM; killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

# slurmstepd (and the job processes under it) outlive slurmd, and a daemon may
# have lost its pid file.  Ours are the SLURM/munge processes holding a file
# (their log) or cwd under $DIR; slurmstepd rewrites its environ for the
# process title, so environment markers do not work.
owns_dir() { # pid
    local f
    for f in "/proc/$1/cwd" "/proc/$1/fd/"*; do
        [[ $(readlink "$f" 2>/dev/null) == "$DIR"/* ]] && return 0
    done
    return 1
}

kill_leftovers() {
    local pids=() p comm
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        comm="$(cat "/proc/$p/comm" 2>/dev/null)" || continue
        case "$comm" in
        slurmstepd | slurmd | slurmctld | munged) ;;
        *) continue ;;
        esac
        proc_alive "$p" && owns_dir "$p" && pids+=("$p")
    done
    ((${#pids[@]})) || return 0
    local all=("${pids[@]}") frontier=("${pids[@]}") next child
    while ((${#frontier[@]})); do
        next=()
        for p in "${frontier[@]}"; do
            for child in $(pgrep -P "$p" 2>/dev/null || true); do
                next+=("$child")
            done
        done
        all+=("${next[@]}")
        frontier=("${next[@]}")
    done
    log "killing leftover processes: ${all[*]}"
    kill -KILL "${all[@]}" 2>/dev/null || true
}

cmd_down() {
    if pid_alive "$RUN/slurmctld.pid"; then
        # Cancel every job so nothing keeps running once the daemons are gone.
        local jobs
        jobs="$(SLURM_CONF="$CONF" timeout 10 squeue -h -o %i 2>/dev/null || true)"
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            SLURM_CONF="$CONF" timeout 10 scancel $jobs 2>/dev/null || true
            local i
            for ((i = 0; i < 50; i++)); do
                [[ -z $(SLURM_CONF="$CONF" timeout 10 squeue -h -t R,CG -o %i 2>/dev/null || true) ]] && break
                sleep 0.2
            done
        fi
    fi
    # Every slurmd of this directory, whatever GENBENCH_SLURM_NODES says now.
    local f
    for f in "$RUN"/slurmd-*.pid "$RUN"/slurmd.pid; do
        [[ -e $f ]] && stop_pidfile "$f" "slurmd ($(basename "$f" .pid))"
    done
    stop_pidfile "$RUN/slurmctld.pid" slurmctld
    stop_pidfile "$(munged_pidfile)" munged
    kill_leftovers
    log "down"
}

cmd_status() {
    if [[ -f $CONF ]] && all_running && [[ -n $(node_state) ]]; then
        SLURM_CONF="$CONF" sinfo
        SLURM_CONF="$CONF" squeue
        return 0
    fi
    echo "slurm_local: down (dir $DIR)"
    return 1
}

# Serialise up/down: parallel test workers may all call `up` at once.  The
# daemons get fd 9 closed so they do not hold the lock after we exit.
lock() {
    exec 9>"$DIR/.lock"
    flock -w 300 9 || die "timed out waiting for $DIR/.lock"
}

case "${1:-}" in
up)
    [[ $(id -u) == 0 ]] || unavailable "must run as root (slurmd and munged run as root here)"
    mkdir -p "$DIR"
    lock
    cmd_up
    ;;
env) env_lines ;;
status) cmd_status ;;
down | purge)
    [[ -d $DIR ]] || exit 0
    lock
    cmd_down
    if [[ $1 == purge ]]; then rm -rf "$DIR"; fi
    ;;
*)
    echo "usage: $0 {up|env|status|down|purge}" >&2
    exit 64
    ;;
esac
