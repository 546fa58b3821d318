#!/usr/bin/env bash
# One command for the day a GPU is lent (an H100/H200 machine with the CUDA toolkit): builds alem
# with CUDA, runs the kernel conformance suite on the GPU, checks the engine on the GPU against
# transformers (greedy tokens and logits of the random tiny Qwen3 model, and of SmolLM2 when its
# store is in models/), runs `alem serve --backend cuda` under the official openai client (greedy
# output compared with `alem generate` on the CPU), and benchmarks decode and prefill of a
# random-weight model in Qwen3-8B's shape at batch 1, 16 and 64 beside the GPU's HBM-bandwidth
# and tensor-core limits. Every step runs under a time limit; results (logs, gtest JSON, bench
# JSON, summary.json) go to one folder. Without a GPU it stops at once with exit code 2.
#
# Usage: scripts/gpu-check.sh [OUT_DIR]   (default gpu-check-<UTC time>/)
# Environment: ALEM_BUILD_DIR (default build-gpu/), ALEM_GPU_CHECK_LAYERS (decoder layers of the
# benchmark model, default 4 of Qwen3-8B's 36: the per-layer shape is exact, the store stays
# about 4 GB), ALEM_GPU_CHECK_SKIP_BUILD=1 (reuse an existing build).
# Exit: 0 all steps passed (skipped steps are listed), 1 a step failed, 2 no GPU / no toolkit.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
out=${1:-$root/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
build=${ALEM_BUILD_DIR:-$root/build-gpu}
layers=${ALEM_GPU_CHECK_LAYERS:-4}
mkdir -p "$out"
summary="$out/steps.tsv"
: >"$summary"
started=$(date +%s)

say() { echo "gpu-check: $*" | tee -a "$out/gpu-check.log"; }
fail_now() {
  say "$1"
  printf 'preflight\tfailed\t0\t%s\n' "$1" >>"$summary"
  exit 2
}

# --- preflight: a GPU and the toolkit, or stop here ------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 || fail_now "no nvidia-smi: this machine has no NVIDIA driver (no GPU to check)"
if ! timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap \
  --format=csv,noheader >"$out/gpu.csv" 2>"$out/nvidia-smi.err"; then
  fail_now "nvidia-smi finds no usable GPU: $(head -c 300 "$out/nvidia-smi.err")"
fi
[ -s "$out/gpu.csv" ] || fail_now "nvidia-smi lists no GPU"
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
command -v nvcc >/dev/null 2>&1 || fail_now "no nvcc: install the CUDA toolkit (or put it on PATH)"
gpu_name=$(head -1 "$out/gpu.csv" | cut -d, -f1 | sed 's/^ *//;s/ *$//')
say "GPU: $(head -1 "$out/gpu.csv"); results in $out"

# step NAME LIMIT_S COMMAND...: runs COMMAND under a time limit, logs to NAME.log, records the
# outcome (exit 77 = skipped, with the log's last line as the reason).
failures=0
step() {
  local name=$1 limit=$2
  shift 2
  local t0 rc status
  t0=$(date +%s)
  say "step $name (limit ${limit} s)"
  timeout --kill-after=15 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=passed ;;
    77) status=skipped ;;
    124 | 137) status="timed out" ;;
    *) status=failed ;;
  esac
  [ "$status" = passed ] || [ "$status" = skipped ] || failures=$((failures + 1))
  local note
  note=$(tail -n 1 "$out/$name.log" | tr '\t' ' ' | head -c 200)
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$note" >>"$summary"
  say "  $name: $status ($(($(date +%s) - t0)) s)"
  return 0
}

# gtest binary with JSON output; fails when any test was skipped (the GPU is there, so a CUDA
# test that skips means the backend could not start).
gtest_no_skips() {
  local json=$1
  shift
  "$@" --gtest_output="json:$json" || return 1
  python3 - "$json" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
skipped = [f"{s['name']}.{t['name']}" for s in doc["testsuites"] for t in s["testsuite"]
           if t.get("result") == "SKIPPED"]
print(f"{doc['tests']} tests, {doc['failures']} failures, {len(skipped)} skipped")
if skipped:
    print("skipped on a GPU machine:", ", ".join(skipped[:10]))
    sys.exit(1)
EOF
}

# --- build -------------------------------------------------------------------------------------
targets=(alem test_backend_ops test_cuda_kernels test_backend_sampling test_engine_golden test_engine_qwen3
  alem_random_model)
build_alem() {
  local launcher=()
  command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  local generator=()
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  cmake -S "$root" -B "$build" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release |
    tee "$out/configure.log" || return 1
  if ! grep -q "alem: CUDA backend ON" "$out/configure.log"; then
    echo "CMake did not enable the CUDA backend (see configure.log)"
    return 1
  fi
  cmake --build "$build" --parallel "$(nproc)" --target "${targets[@]}"
}
if [ "${ALEM_GPU_CHECK_SKIP_BUILD:-0}" != 1 ]; then
  step build 420 build_alem
fi
if [ ! -x "$build/tests/test_backend_ops" ] || [ ! -x "$build/alem" ]; then
  say "the build did not produce the test binaries; see $out/build.log"
  exit 1
fi

# --- kernel conformance on the GPU ---------------------------------------------------------
# (MatmulGgmlBlockTypes is left out: the CUDA backend has no ggml block kernels yet and says so.)
step conformance 240 gtest_no_skips "$out/conformance.json" "$build/tests/test_backend_ops" \
  --gtest_filter='*/cuda:-*MatmulGgmlBlockTypes*'
step cuda_kernels 120 gtest_no_skips "$out/cuda_kernels.json" "$build/tests/test_cuda_kernels"
# The engine's sampler with logits left on the GPU (candidates made there) against host rows.
step backend_sampling 120 gtest_no_skips "$out/backend_sampling.json" \
  "$build/tests/test_backend_sampling" --gtest_filter='*/cuda'

# --- alem generate on the GPU against the CPU: weights adopted into device memory, logits left
# on the device, greedy and sampled rows (top-k: device candidates; top-p: whole rows copied) ---
generate_compare() {
  local store="$out/tiny-qwen3.h5"
  "$build/alem" convert "$root/tests/data/tiny-qwen3" "$store" --dtype bf16 >/dev/null || return 1
  local mismatches=0 args name
  for args in "--kv-cache-dtype f32" "--kv-cache-dtype bf16" \
    "-t 0.8 --top-k 20 --seed 7" "-t 0.8 --top-p 0.9 --seed 7"; do
    name=$(echo "$args" | tr ' .' '__')
    # shellcheck disable=SC2086  # $args holds several options on purpose
    for backend in cpu cuda; do
      "$build/alem" generate -m "$store" -p "The GPU check" -n 48 --ignore-eos --quiet \
        --backend "$backend" $args >"$out/generate$name.$backend.txt" || return 1
    done
    if cmp -s "$out/generate$name.cpu.txt" "$out/generate$name.cuda.txt"; then
      echo "equal: $args"
    else
      echo "DIFFERENT: $args"
      mismatches=$((mismatches + 1))
    fi
  done
  rm -f "$store"
  echo "$mismatches of 4 generations differ between cpu and cuda"
  [ "$mismatches" -eq 0 ]
}
step generate_cuda_vs_cpu 180 generate_compare

# --- the engine on the GPU against transformers (and so against the CPU run of the same test) ---
export ALEM_TEST_DATA="$root/tests/data" ALEM_SOURCE_DIR="$root"
step qwen3_golden_cuda 240 env ALEM_TEST_BACKEND=cuda "$build/tests/test_engine_qwen3" \
  --gtest_filter='Stores/Qwen3Golden.*' --gtest_output="json:$out/qwen3_golden_cuda.json"
smollm2="$root/models/smollm2-135m-instruct.h5"
smollm2_golden() {
  if [ ! -s "$smollm2" ] || [ ! -s "${smollm2%.h5}-f32.h5" ]; then
    echo "skip: no SmolLM2 stores in models/ (scripts/prepare-model.sh)"
    return 77
  fi
  ALEM_TEST_MODEL="$smollm2" ALEM_TEST_BACKEND=cuda "$build/tests/test_engine_golden" \
    --gtest_output="json:$out/smollm2_golden_cuda.json"
}
step smollm2_golden_cuda 300 smollm2_golden

# --- alem serve --backend cuda under the openai client -----------------------------------------
serve_check() {
  [ -s "$smollm2" ] || {
    echo "skip: no SmolLM2 store in models/"
    return 77
  }
  ALEM_BINARY="$build/alem" ALEM_TEST_MODEL="$smollm2" ALEM_SERVE_TEST_ARGS="--backend cuda" \
    bash "$root/tests/e2e/serve/run_serve_tests.sh" api
}
step serve_cuda 300 serve_check

# --- decode / prefill benchmark of a random-weight Qwen3-8B-shaped model -----------------------
bench_model="$out/random-qwen3-8b-${layers}layers.h5"
step random_model 300 "$build/bench/alem_random_model" --shape qwen3-8b --layers "$layers" \
  --out "$bench_model"
for batch in 1 16 64; do
  step "bench_batch_$batch" 240 "$build/alem" bench batch --model "$bench_model" --backend cuda \
    --batch "$batch" --concurrency "$batch" --requests $((batch * 2)) --prompt-tokens 512 \
    --max-tokens 64 --max-batch-tokens 8192 --output "$out/bench-batch-$batch.json"
done
rm -f "$bench_model"

# --- summary: steps, bench figures beside the GPU's limits -----------------------------------
python3 - "$out" "$gpu_name" "$layers" "$(($(date +%s) - started))" <<'EOF' | tee "$out/summary.txt"
import json, os, sys
out, gpu, layers, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# Datasheet figures: HBM bytes/s, dense bf16 tensor-core FLOP/s (no sparsity).
LIMITS = {"H200": (4.8e12, 989e12), "H100 80GB HBM3": (3.35e12, 989e12),
          "H100 SXM": (3.35e12, 989e12), "H100 NVL": (3.9e12, 835e12),
          "H100 PCIe": (2.0e12, 756e12)}
hbm, tc = next((v for k, v in LIMITS.items() if k in gpu), (None, None))
steps = [dict(zip(("step", "status", "seconds", "note"), line.rstrip("\n").split("\t")))
         for line in open(os.path.join(out, "steps.tsv"))]
# Qwen3-8B per-layer shape; the stored model has `layers` of them plus embedding and LM head.
H, q, kv, ffn, vocab = 4096, 32 * 128, 8 * 128, 12288, 151936
layer_params = H * (q + 2 * kv) + q * H + 3 * H * ffn
weights_read = 2 * (layers * layer_params + vocab * H)  # bf16 bytes per decode step
flops_per_token = 2 * (layers * layer_params + vocab * H)
rows = []
for batch in (1, 16, 64):
    path = os.path.join(out, f"bench-batch-{batch}.json")
    if not os.path.exists(path):
        continue
    b = json.load(open(path))
    r = b["replicas"][0] if b.get("replicas") else {}
    itl = r.get("itl_p50_s") or 0
    ttft = r.get("ttft_p50_s") or 0
    decode = batch / itl if itl else None
    prefill = b["prompt_tokens"] / ttft if ttft else None
    decode_limit = batch * hbm / weights_read if hbm else None
    prefill_limit = tc / flops_per_token if tc else None
    rows.append({"batch": batch, "decode_tokens_per_s": decode,
                 "decode_limit_hbm_tokens_per_s": decode_limit,
                 "prefill_tokens_per_s_at_batch_1_ttft": prefill if batch == 1 else None,
                 "prefill_limit_tensor_core_tokens_per_s": prefill_limit,
                 "generated_tokens_per_s": b.get("generated_tokens_per_second"),
                 "itl_p50_s": itl, "ttft_p50_s": ttft})
doc = {"gpu": gpu, "hbm_bytes_per_s": hbm, "bf16_dense_flops": tc, "seconds": seconds,
       "bench_model": {"shape": "Qwen3-8B", "layers": layers, "weights_bytes": weights_read},
       "steps": steps, "bench": rows}
json.dump(doc, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(f"GPU {gpu}: {seconds} s")
for s in steps:
    print(f"  {s['step']:<22} {s['status']:<10} {s['seconds']:>4} s  {s['note'][:70]}")
fmt = lambda x: "-" if x is None else f"{x:,.0f}"
print(f"\nrandom Qwen3-8B-shaped model, {layers} of 36 layers, bf16 weights and KV cache")
print("batch  decode tok/s  (HBM limit)   prefill tok/s  (tensor-core limit)")
for r in rows:
    print(f"{r['batch']:>5}  {fmt(r['decode_tokens_per_s']):>12}  ({fmt(r['decode_limit_hbm_tokens_per_s']):>9})"
          f"   {fmt(r['prefill_tokens_per_s_at_batch_1_ttft']):>13}  ({fmt(r['prefill_limit_tensor_core_tokens_per_s'])})")
EOF
if [ "$failures" -gt 0 ]; then
  say "$failures step(s) failed; logs in $out"
  exit 1
fi
say "all steps passed or were skipped (see summary.txt); results in $out"
