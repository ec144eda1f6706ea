#!/usr/bin/env bash
# The benchmark tools' accelerator rows (bf16) in one run, for a GPU machine with JAX (CUDA), PyTorch
# and transformers installed. From the repository root:
#
#     OUT=bench_out bash tools/bench_gpu.sh
#
# Writes one JSON object per tool to $OUT/<tool>.json (stderr to $OUT/<tool>.err) and prints a summary
# table at the end. Wheels in .whl/ (diffusers and its importlib_metadata; optionally flax at the
# version this repository is tested with) are installed into /tmp/site first, for machines that cannot
# download; if the carried flax does not import with the machine's jax (flax 0.12.8 under jax 0.11.2
# did not), the script drops it and uses the machine's own.
# Each tool runs under its own time limit, so one failure leaves the others' rows. QUICK=1 runs every
# tool at its smoke size (a check of this script, on any machine). ONLY="bench_train bench_flow" runs
# just the named rows (names as in $OUT; the smoke row always runs), for a rerun inside a short lease.
set -u
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# JAX preallocates 75% of GPU memory by default; PyTorch runs in the same process.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
PY=${PY:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import jax, flax, torch, transformers; print('jax', jax.__version__, jax.devices(), '| flax', flax.__version__,
'| torch', torch.__version__, torch.cuda.is_available(), '| transformers', transformers.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"

jax_backend() { $PY -c "import jax; print(jax.default_backend())" 2>/dev/null; }
run() {  # run NAME LIMIT_S ARGS...: one tool, JSON to $OUT/NAME.json
  local name=$1 limit=$2; shift 2
  if [ -n "${ONLY:-}" ] && [ "$name" != bench_train.smoke ] && [[ " $ONLY " != *" $name "* ]]; then
    return 0
  fi
  local t0=$SECONDS
  timeout "$limit" $PY "tools/${name%%.*}.py" "$@" --json > "$OUT/$name.json" 2> "$OUT/$name.err"
  local rc=$?
  echo "== $name rc=$rc in $((SECONDS - t0)) s: $*"
  [ $rc -eq 0 ] || grep -v "^[IW][0-9]" "$OUT/$name.err" | tail -6
  return $rc
}

if [ "${QUICK:-0}" = 1 ]; then
  TRAIN=smoke DECODE=smoke DECODE_XL=smoke CMDBUF=smoke LATTE=smoke DIT=smoke COMPILE="--size=smoke --layers=1,2" EXTRA="--sample_steps=2" PROFILE_LM=smoke
  UNIFIED=smoke SWEEP="--sizes=smoke --tokens=4,16" T2I=smoke
else
  TRAIN=${TRAIN-small,large,xl} DECODE=small,large DECODE_XL=xl CMDBUF=small,large,xl LATTE=small DIT=${DIT-small,base}
  COMPILE="--size=small --layers=4,32" EXTRA="" PROFILE_LM=xl
  UNIFIED=${UNIFIED-small,accelerator} SWEEP="--sizes=small --tokens=64,256,1024" T2I=${T2I-small,accelerator}
fi
run bench_train.smoke 120 --sizes=smoke --steps=1 --dtype=bfloat16 || {
  echo "smoke failed with the carried flax; retrying with the machine's own"; rm -rf /tmp/site/flax /tmp/site/flax-*
  run bench_train.smoke 120 --sizes=smoke --steps=1 --dtype=bfloat16; }
ATT=cudnn; [ "$(jax_backend)" = gpu ] || ATT=einsum
# The train rows hold f32 state for both frameworks plus activations: give JAX more of the GPU (at 0.45
# the xl step with materialised attention ran out of memory on an H200).
# remat "dots" trains fastest on the CPU; "none" is the library default: both, in the same A/B rounds.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.7 run bench_train 240 --sizes=$TRAIN --steps=10 --dtype=bfloat16 --attention=$ATT \
  --remat=none,dots
# --unfused: the separate q/k/v and gate/up matmuls too (generate fuses them); --layouts: the layers'
# kernels as stored ("none"), only the multiply+reduce ones transposed ("small", generate's batch-1 GPU
# default) and all transposed, in the same A/B rounds.
run bench_decode 150 --sizes=$DECODE --batches=1,8 --repeats=3 --dtype=bfloat16 --unfused --layouts=none,small,all
run bench_decode.xl 150 --sizes=$DECODE_XL --batches=1 --repeats=3 --dtype=bfloat16 --unfused \
  --layouts=none,small,all
# Batch-1 decode on a GPU is launch-bound (one while-loop iteration = every layer's kernels): the same
# run with XLA's command buffers (CUDA graphs) extended to while/conditional bodies.
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" \
  run bench_decode.cmdbuf 150 --sizes=$CMDBUF --batches=1 --repeats=3 --dtype=bfloat16
run bench_flow 150 --latte_sizes=$LATTE --dit_sizes=$DIT --rounds=5 --dtype=bfloat16 $EXTRA
# LaTtE-Flow's 30-step sampler is launch-bound too (~8 ms a sample): the same rows with command buffers.
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" \
  run bench_flow.cmdbuf 120 --latte_sizes=$LATTE --dit_sizes= --rounds=5 --dtype=bfloat16 $EXTRA
run bench_compile 90 $COMPILE --rounds=1
# The papers' unified train steps (BLIP3-o, MetaQuery, BLIP3o-NEXT) vs transformers + diffusers, eager
# and torch.compile; the cost growth over the DiT's image tokens (eager only: compile time per shape);
# text-to-image end to end at batch 1 and 8 with the per-stage breakdown.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.7 run bench_unified 420 --sizes=$UNIFIED --steps=5 --dtype=bfloat16 --attention=$ATT
XLA_PYTHON_CLIENT_MEM_FRACTION=0.7 run bench_unified.tokens 300 $SWEEP --steps=3 --dtype=bfloat16 --attention=$ATT \
  --baselines=eager --nomemory
run bench_t2i 300 --sizes=$T2I --batches=1,8 --rounds=3 --dtype=bfloat16 --attention=$ATT $EXTRA
# Where the time goes, kernel by kernel (the gaps to the bounds above): batch-1 decode and a LaTtE sample.
run profile_kernels.decode 90 --target=decode --size=$PROFILE_LM --dtype=bfloat16 --top=30
run profile_kernels.latte 60 --target=latte --size=$LATTE --top=30

$PY - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
  if not (out / f"{name}.json").exists():    # not run (ONLY=...); a run tool always leaves the file
    return None
  try:
    return json.loads((out / f"{name}.json").read_text())
  except Exception as e:                     # noqa: BLE001  (a failed tool leaves no JSON)
    print(f"{name}: no result ({type(e).__name__})"); return None
r = load("bench_train")
if r:
  p = r["matmul_gflops"]
  print(f"train ({r['attention']}): matmul peak {p['peak'] / 1e3:.0f} TFLOP/s (jax {p['jax'] / 1e3:.0f}, torch {p['torch'] / 1e3:.0f})")
  for k, v in r["sizes"].items():
    print(f"  {k} ({v['attention']}): jax {v['jax_step_s'] * 1e3:.1f} ms (MFU {v['jax_mfu']:.2f}) torch {v['torch_step_s'] * 1e3:.1f} ms "
          f"(MFU {v['torch_mfu']:.2f}) speedup {v['speedup']:.2f}x"
          + (f"; torch.compile {v['torch_compile_step_s'] * 1e3:.1f} ms speedup {v['speedup_compile']:.2f}x"
             if "speedup_compile" in v else f"; torch.compile: {v.get('torch_compile_error', 'not run')}")
          + "; remat " + ", ".join(f"{p} {t * 1e3:.1f} ms" for p, t in v.get("remat_step_s", {}).items()))
for name in ("bench_decode", "bench_decode.xl", "bench_decode.cmdbuf"):
  r = load(name)
  if r:
    print(f"{name}: copy {r['copy_bandwidth_gbs']:.0f} GB/s")
    for k, v in r["runs"].items():
      print(f"  {k}: jax {v['jax_tok_s']:.0f} tok/s ({v['jax_ms_per_step']:.2f} ms/step, bound {v['bound_ms_per_step']:.3f}) "
            f"torch {v['torch_tok_s']:.0f} tok/s ratio {v['ratio']:.2f}x"
            + (f"; unfused {v['jax_unfused_ms_per_step']:.2f} ms/step" if "jax_unfused_ms_per_step" in v else "")
            + "".join(f"; {k} kernels {ms:.2f} ms/step" for k, ms in v.get("layouts", {}).items()))
for name in ("bench_flow", "bench_flow.cmdbuf"):
  r = load(name)
  for k, v in (r["latte"] if r else {}).items():
    print(f"{name} latte {k}: latte {v['latte_s'] * 1e3:.2f} ms full {v['full_s'] * 1e3:.2f} ms "
          f"speedup {v['speedup']:.2f}x (target {v['target_speedup']:.1f})")
r = load("bench_flow")
if r:
  for k, v in r["dit"].items():
    print(f"dit {k}: jax {v['jax_steps_s']:.1f} steps/s torch {v['torch_steps_s']:.1f} ratio {v['ratio']:.2f}x diff {v['max_abs_diff']:.1e}"
          + (f"; torch.compile {v['torch_compile_steps_s']:.1f} steps/s ratio {v['ratio_compile']:.2f}x"
             if "ratio_compile" in v else f"; torch.compile: {v.get('torch_compile_error', 'not run')}"))
for name in ("bench_unified", "bench_unified.tokens"):
  r = load(name)
  for k, v in (r["rows"] if r else {}).items():
    t, f = v["step_s"], v["model_flops"]
    print(f"{name} {k}: jax {t['jax'] * 1e3:.1f} ms (MFU {v['mfu']['jax']:.2f}, {f['total'] / 1e12:.2f} TFLOP) "
          + " ".join(f"{n} {t[n] * 1e3:.1f} ms ({v['speedup'][n]:.2f}x)" for n in t if n != "jax")
          + (f" compile error: {v['torch_compile_error']}" if "torch_compile_error" in v else ""))
  for k, e in (r.get("exponents", {}) if r else {}).items():
    print(f"{name} {k}: step time ~ tokens^k:", {n: round(x, 2) for n, x in e.items()})
r = load("bench_t2i")
for k, v in (r["rows"] if r else {}).items():
  print(f"t2i {k}: jax {v['jax']['images_s']:.2f} img/s torch {v['torch']['images_s']:.2f} img/s ratio {v['ratio']:.2f}x; "
        "jax stages " + ", ".join(f"{s} {x * 1e3:.0f}" for s, x in v["jax_stages"]["stages_s"].items())
        + " ms; torch stages " + ", ".join(f"{s} {x * 1e3:.0f}" for s, x in v["torch"]["stages_s"].items()) + " ms")
r = load("bench_compile")
if r:
  print("compile time ratio (deep/shallow):", {k: round(v, 2) for k, v in r["ratio"].items()})
for name in ("profile_kernels.decode", "profile_kernels.latte"):
  r = load(name)
  if r:
    print(f"{name} ({r['size']}): {r['kernels_per_step']:.0f} kernels/step, {r['busy_us_per_step']:.0f} us kernel "
          f"time, {r['span_us_per_step']:.0f} us wall (busy {r['busy_ratio']:.2f}); top: "
          + ", ".join(f"{k['name'][:28]} {k['us_per_step']:.1f}" for k in r["top"][:5]))
EOF
