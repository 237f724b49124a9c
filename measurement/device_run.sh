#!/bin/bash
# Run one sweep on the device machine (see measurement/README_SECTION.md).
# usage: bash measurement/device_run.sh SWEEP.yaml [more `advisor measure` options]
# Expects bitsandbytes/torchao already installed on PYTHONPATH (the device call installs the carried wheels first).
set -o pipefail
export PYTHONUNBUFFERED=1
OUTDIR=${OUT:-out}/run
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,memory.used,memory.total --format=csv > "$OUTDIR/nvidia_smi.csv" 2>&1
python3 -c "import torch, transformers, torchao, bitsandbytes; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'torchao', torchao.__version__, 'bnb', bitsandbytes.__version__)"
python3 -m measurement.cli --sweep "$1" --out "$OUTDIR" "${@:2}"
