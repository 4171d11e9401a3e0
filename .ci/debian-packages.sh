#!/usr/bin/env bash
# Install the Debian packages that the test suite uses as real systems and
# independent references: SLURM and MUNGE (a private single-node SLURM, see
# tests/clusters.py) and Connectome Workbench (wb_command, the reference that
# the CIFTI, registration and volume-sampling checks compare against) and
# Chromium (the headless browser that renders the HTML reports in the report test).
# Idempotent: does nothing when their programs are there.
set -euo pipefail
programs="munged slurmctld slurmd sinfo sbatch squeue scontrol scancel wb_command chromium"
missing=0
for program in $programs; do
    command -v "$program" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = 0 ]; then
    echo "slurm-wlm, munge, connectome-workbench and chromium already installed"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install slurm-wlm, munge, connectome-workbench and chromium here (needs root and apt-get);" \
         "the SLURM, Workbench and browser tests will be skipped" >&2
    exit 1
fi
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends slurm-wlm munge connectome-workbench chromium >/dev/null
echo "installed slurm-wlm, munge, connectome-workbench and chromium in $(( $(date +%s) - start )) s"
