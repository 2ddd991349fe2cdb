# Sourced by the gpu_*.sh scripts: Keras on JAX, a scratch folder, and `step NAME COMMAND...`, which runs the
# command with its output in LOGS/NAME.log (LOGS defaults to OUT) and appends its exit code, wall time and the peak
# GPU memory sampled meanwhile to OUT/timeline.txt. Needs OUT set; sets WORK, LOGS, PY and CPUS.
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # so the sampled GPU memory is what the run uses, not JAX's pool
LOGS=${LOGS:-$OUT}
mkdir -p "$OUT" "$LOGS"
WORK=$(mktemp -d /tmp/dpdnet_gpu.XXXX)
PY=${PYTHON:-python3}
CPUS=$(nproc)

step() {
  local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$WORK/mem_$name.txt" 2>/dev/null &
  local sampler=$! t0=$(date +%s%N)
  set +e; "$@" > "$LOGS/$name.log" 2>&1; local rc=$?; set -e
  kill $sampler 2>/dev/null || true
  local peak=$(sort -n "$WORK/mem_$name.txt" 2>/dev/null | tail -1)
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%-10s rc=%s %6d.%03d s  peak GPU memory %s MiB  :: %s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) \
    "${peak:-?}" "$*" | tee -a "$OUT/timeline.txt"
  tail -n 3 "$LOGS/$name.log"
  return $rc
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
  $PY -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"; } \
  | tee "$OUT/timeline.txt"
