#!/usr/bin/env bash
# Start a single-node SLURM (Debian's slurm-wlm and munge) on this machine, for the tests.
# Needs root. Installs the packages when missing. Idempotent: a running cluster is left alone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

if sinfo -h >/dev/null 2>&1 && [ "$(sinfo -h -o %t | head -1)" = "idle" ]; then
    exit 0
fi

mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
chmod 755 /run/munge
pgrep -x munged >/dev/null || munged --force 2>/dev/null || sudo -u munge munged

# Twice the machine's cores: the test jobs mostly wait (paused steps, walltimes), and a run on two
# "nodes" (2 tasks) must be able to run beside a run of one process, as on a real cluster
# (config_overrides in slurm.conf.in lets slurmd accept more CPUs than it finds).
cores=$(( $(nproc) * 2 ))
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
sed -e "s/@HOST@/$host/g" -e "s/@CPUS@/$cores/g" -e "s/@MEM@/$mem/g" "$here/slurm.conf.in" > /etc/slurm/slurm.conf
rm -f /etc/slurm/cgroup.conf

pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
slurmctld -c -L /var/log/slurm/slurmctld.log
slurmd -L /var/log/slurm/slurmd.log

for _ in $(seq 1 30); do
    state=$(sinfo -h -o %t 2>/dev/null | head -1 || true)
    if [ "$state" = "idle" ]; then
        exit 0
    fi
    if [ "$state" = "down" ] || [ "$state" = "drain" ] || [ "$state" = "down*" ]; then
        scontrol update nodename="$host" state=resume 2>/dev/null || true
    fi
    sleep 1
done
echo "SLURM did not come up; see /var/log/slurm/" >&2
sinfo >&2 || true
exit 1
