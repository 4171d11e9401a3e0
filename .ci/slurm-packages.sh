#!/usr/bin/env bash
# Install SLURM and MUNGE (Debian packages) so the test suite can start a private
# single-node SLURM (tests/clusters.py). Idempotent: does nothing when they are there.
set -euo pipefail
programs="munged slurmctld slurmd sinfo sbatch squeue scontrol scancel"
missing=0
for program in $programs; do
    command -v "$program" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = 0 ]; then
    echo "slurm-wlm and munge already installed"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install slurm-wlm and munge here (needs root and apt-get); the SLURM test will be skipped" >&2
    exit 1
fi
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
echo "installed slurm-wlm and munge in $(( $(date +%s) - start )) s"
