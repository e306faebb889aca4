#!/usr/bin/env bash
# The GPU measurement of the sweep and the DP, as one prepared run (about 6 minutes on a GPU
# machine; CPU figures are in docs/sweeps.md and the README).
#
#   bash benchmarks/gpu.sh            # writes gpu.log and the benchmarks' JSON under $OUT
#
# It uses the machine's own CUDA build of jax (nothing is installed: toysim is imported from this
# checkout through PYTHONPATH), names the card, then runs on the GPU
#   * bench_sweep.py: the V = 3, T = 6 enumeration case at batch sizes up to 16,384 and the
#     T = 1,000 Markov x automaton DP case up to 1,024, each against one call per instance; then
#     the enumeration again in sub-batches of 128, the CPU's choice (on a GPU the sweep runs a
#     device's whole share at once: whether sub-batches help there is not measured yet);
#   * bench_dp.py --quick --no-storm: the DP engine alone at growing T, V, S;
# and the same sweep case on the machine's CPU cores (JAX_PLATFORMS=cpu) for a side-by-side.
# Each step has its own time limit, so one slow step cannot take the rest with it, and each
# benchmark prints and saves its rows as it measures them. It stops at once where jax has no GPU
# backend (the "memory limit" rows read the GPU's memory from JAX).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/toysim-gpu}
mkdir -p "$out"
log="$out/gpu.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
} 2>&1 | tee "$log"
step() {  # step SECONDS NAME COMMAND...
  local limit=$1 name=$2
  shift 2
  echo "== $name" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}
if ! python3 -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"; then
  echo "no GPU backend in this jax: nothing measured" | tee -a "$log"
  exit 1
fi
batches=(--enum-batches 1 256 1024 4096 16384 --dp-batches 1 16 64 256 1024)
step 150 "sweep, GPU" python3 benchmarks/bench_sweep.py --repeat 2 --json "$out/sweep_gpu.json" "${batches[@]}"
step 90 "sweep, GPU, sub-batches of 128 (the CPU's choice at V = 3, T = 6)" python3 benchmarks/bench_sweep.py \
  --cases enum --sub-batch 128 --repeat 2 --json "$out/sweep_gpu_sub128.json" --enum-batches 1024 4096 16384
step 90 "DP engine, GPU" python3 benchmarks/bench_dp.py --quick --no-storm --repeat 2 --json "$out/dp_gpu.json"
step 150 "sweep, CPU" env JAX_PLATFORMS=cpu python3 benchmarks/bench_sweep.py --repeat 2 \
  --json "$out/sweep_cpu.json" "${batches[@]}"
