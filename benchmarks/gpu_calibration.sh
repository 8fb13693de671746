#!/usr/bin/env bash
# One prepared calibration run on a GPU machine: measure the micro-benchmarks (and e2e passes) into
# $OUT/raw_micro.json (format of shared/calibration/h200_micro.json), within BUDGET_S seconds, then print
# a short summary. PyTorch must be installed already (this script never installs it).
#   bash benchmarks/gpu_calibration.sh [--quick] [--no-e2e]
# The JSON is rewritten after each section, so a run cut off by the budget keeps what it measured.
# Then, within EXTRA_BUDGET_S more seconds, what the host/GPU model and the precision model need, into
# $OUT/raw_extra.json (docs/calibration-status.md): device time per small kernel replayed inside a CUDA graph
# (and the eager time of the same kernel, i.e. the host's dispatch), one graph launch, the fp16 scatter-add
# (index_add_) of the sorted MoE combine, fp8 GEMMs (torch._scaled_mm, per-tensor scales), and the host costs
# of the sorted MoE (a read-back to the host; the per-expert loop's host time per expert), small GEMMs and
# decode attention calls in a CUDA graph (a check of the kernels' fixed part: simulator.calibration.small_kernels),
# MLA-shaped decode attention (128 heads over one 576-wide latent: compute-bound, docs/cost-model.md), MoE expert
# GEMMs at decode shapes (bmm against PyTorch's grouped GEMMs with routed rows), sliding-window prefill attention
# against causal (FlexAttention), and the sustained rate of the largest bf16 and fp8 GEMM over SUSTAIN_S (10)
# seconds with the SM clock and power.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
BUDGET_S=${BUDGET_S:-360}
EXTRA_BUDGET_S=${EXTRA_BUDGET_S:-180}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ! "$PY" -c "import simulator.calibration.microbench" 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || echo "gpu_calibration: pip install -e . failed; running from the checkout" >&2
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader 2>/dev/null || true
start=$(date +%s)
timeout -k 10 "$BUDGET_S" "$PY" -m simulator.calibration.microbench --out "$OUT/raw_micro.json" "$@"
rc=$?
echo "gpu_calibration: microbench exit $rc after $(( $(date +%s) - start )) s (budget ${BUDGET_S} s)"
[ -f "$OUT/raw_micro.json" ] || exit "$rc"
"$PY" - "$OUT/raw_micro.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
env = d.get("env", {})
print(f"{env.get('name')}: {env.get('sm_count')} SMs, {(env.get('mem_bytes') or 0) / 2**30:.0f} GiB, "
      f"torch {env.get('torch')}, CUDA {env.get('cuda')}")
print("sections:", ", ".join(f"{k} {len(v)}" for k, v in d.items() if isinstance(v, list)))
best = lambda k, f: max((e[f] for e in d.get(k, [])), default=float("nan"))
print(f"best gemm {best('gemm', 'tflops'):.0f} TFLOP/s, bmm {best('bmm', 'tflops'):.0f}, "
      f"flash prefill {best('sdpa_prefill', 'tflops'):.0f}; decode attention {best('sdpa_decode', 'gbps'):.0f} GB/s, "
      f"copy {best('copy', 'gbps_rw'):.0f} GB/s r+w")
for e in d.get("launch", []):
    print(f"launch {e['op']}: {e['s'] * 1e6:.1f} us")
for e in d.get("e2e_dev", []):
    times = ", ".join(f"{k} {e[k] * 1e3:.2f} ms" for k in ("s", "s_eager", "s_cuda_graph") if e.get(k) is not None)
    print(f"e2e {e['case']} {e['phase']} batch {e['batch']}: {times}")
PY
# The host's time per no-kernel PyTorch call (views, splits, basic indexing), and the dispatch of the reference
# code's index, scan and reduction ops beyond the 1-element add's, on this GPU's host, CUDA tensors: what
# hardware_profiles/measurements/host_calls.json measured on the development VM's CPU (~35 s here).
timeout -k 10 120 "$PY" -m simulator.calibration.host_calls --device cuda --out "$OUT/raw_host_calls.json" \
  || echo "gpu_calibration: host_calls failed or ran out of time" >&2
extra_start=$(date +%s)
timeout -k 10 "$EXTRA_BUDGET_S" "$PY" - "$OUT/raw_extra.json" "$@" <<'PY'
"""Extra micro-benchmarks (self-contained: torch only): small kernels in a CUDA graph, graph launch,
scatter-add, fp8 GEMMs. Each section is written as soon as it is measured."""
import json, os, statistics, sys, time
import torch

out_path, quick = sys.argv[1], "--quick" in sys.argv[2:]
data = {}
def save():
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, out_path)
if not torch.cuda.is_available():
    print("gpu_calibration extra: no CUDA GPU visible; nothing measured", file=sys.stderr)
    sys.exit(0)
dev = "cuda"
props = torch.cuda.get_device_properties(0)
data["env"] = {"name": props.name, "sm_count": props.multi_processor_count, "torch": torch.__version__, "cuda": torch.version.cuda}
REPS = 3 if quick else 5
def events_s(fn, calls):
    """Median over REPS of the time of `calls` back-to-back calls, CUDA events, after warm-up."""
    fn(); torch.cuda.synchronize()
    times = []
    for _ in range(REPS):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn()
        b.record(); b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / calls)
    return statistics.median(times)
def capture(fn, copies):
    """A CUDA graph of `copies` back-to-back calls of fn (after side-stream warm-up, as PyTorch requires)."""
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(copies):
            fn()
    return g
def graph_per_kernel_s(fn, what, replays=10):
    """Device seconds per call of fn replayed in a CUDA graph of COPIES copies; None (said on stderr) when
    fn cannot be captured."""
    try:
        g = capture(fn, COPIES)
    except RuntimeError as exc:
        print(f"gpu_calibration extra: {what} not capturable: {str(exc).splitlines()[0]}", file=sys.stderr)
        return None
    return events_s(g.replay, replays) / COPIES

# 1. Small kernels: eager per call (host dispatch when the kernel is tiny) and device time per kernel
#    replayed inside a graph of COPIES copies (no per-kernel dispatch: what a captured decode step pays).
COPIES = 20 if quick else 100
with torch.inference_mode():
    t, h, e = 64, 512, 16
    x = torch.randn(t, h, device=dev, dtype=torch.float16)
    y = torch.randn(t, h, device=dev, dtype=torch.float16)
    one = torch.zeros(1, device=dev, dtype=torch.float16)
    ids = torch.randint(0, e, (t * 2,), device=dev)
    idx = torch.randint(0, t, (t * 2,), device=dev)
    buf = torch.zeros(t * 2, h, device=dev, dtype=torch.float16)
    rows_in = torch.randn(t * 2, h, device=dev, dtype=torch.float16)  # index_copy_ refuses a source overlapping buf
    logits = torch.randn(t, e, device=dev, dtype=torch.float32)
    experts = torch.arange(e, device=dev)
    slots = torch.arange(t * 2, device=dev)
    onehot = (ids.unsqueeze(1) == experts).to(torch.int32)  # made once: each row below is one PyTorch call
    mask = ids < 4
    ids1 = ids + 1
    small = {
        "add_1elem": lambda: one + 1,
        "add_64x512": lambda: x + y,
        "copy_64x512": lambda: buf[:t].copy_(x),
        "cumsum_128x16_int32": lambda: onehot.cumsum(0),
        "gather_rows_128x512": lambda: x.index_select(0, idx),
        "index_copy_128x512": lambda: buf.index_copy_(0, slots, rows_in),
        "where_128": lambda: torch.where(mask, ids, ids1),
        "softmax_64x16_fp32": lambda: torch.softmax(logits, -1),
        "topk2_64x16": lambda: logits.topk(2, dim=-1),
        "zeros_128x512": lambda: torch.zeros(t * 2, h, device=dev, dtype=torch.float16),
    }
    rows = []
    for name, fn in small.items():
        eager_s = events_s(fn, 200)
        graph_s = graph_per_kernel_s(fn, name)
        rows.append({"op": name, "s_eager": eager_s, "s_graph_per_kernel": graph_s, "graph_copies": COPIES})
    data["graph_kernels"] = rows
    save()

    # 2. One graph launch from the host: wall time of replaying a 1-kernel graph, synchronised each time.
    g1 = capture(small["add_1elem"], 1)
    walls = []
    for _ in range(200):
        torch.cuda.synchronize(); t0 = time.perf_counter(); g1.replay(); torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    sync_walls = []
    for _ in range(200):
        torch.cuda.synchronize(); t0 = time.perf_counter(); torch.cuda.synchronize()
        sync_walls.append(time.perf_counter() - t0)
    data["graph_launch"] = {"s_replay_1_kernel_synced": statistics.median(walls), "s_sync_only": statistics.median(sync_walls)}
    save()

    # 3. Scatter-add of the sorted MoE combine: top-2 copies of T tokens summed into T rows, fp16
    #    (index_add_ with atomics), eager and in a graph; s_per_byte is per byte of input.
    rows = []
    for tokens, hidden in ((4096, 512), (32768, 512), (16384, 4096)) if not quick else ((1024, 512),):
        src = torch.randn(tokens * 2, hidden, device=dev, dtype=torch.float16)
        order = torch.randperm(tokens * 2, device=dev) // 2
        dst = torch.zeros(tokens, hidden, device=dev, dtype=torch.float16)
        fn = lambda: dst.index_add_(0, order, src)
        eager_s = events_s(fn, 20)
        g = capture(fn, 10)
        graph_s = events_s(g.replay, 5) / 10
        rows.append({"tokens": tokens, "top_k": 2, "hidden": hidden, "bytes_in": src.numel() * 2,
                     "s": eager_s, "s_graph": graph_s, "s_per_byte": graph_s / (src.numel() * 2)})
    data["scatter_add"] = rows
    save()

    # 4. fp8 GEMMs: torch._scaled_mm, e4m3 x e4m3 with per-tensor scales, bf16 out ([M,K] x [K,N]);
    #    tflops = 2MKN/s. Skipped where the GPU or the torch build has no fp8 GEMM.
    rows = []
    shapes = [(m, k, n) for k, n in ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192))
              for m in ((16, 256, 4096) if quick else (1, 16, 64, 256, 1024, 4096, 16384))]
    fp8 = getattr(torch, "float8_e4m3fn", None)
    if fp8 is None or not hasattr(torch, "_scaled_mm"):
        print("gpu_calibration extra: this torch has no float8_e4m3fn/_scaled_mm; fp8 GEMMs skipped", file=sys.stderr)
    else:
        scale = torch.ones((), device=dev, dtype=torch.float32)
        for m, k, n in shapes:
            try:
                a = torch.randn(m, k, device=dev, dtype=torch.float16).to(fp8)
                b = torch.randn(n, k, device=dev, dtype=torch.float16).to(fp8).t()  # column-major, as _scaled_mm needs
                fn = lambda: torch._scaled_mm(a, b, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)
                s = events_s(fn, 20)
                rows.append({"M": m, "K": k, "N": n, "dtype": "fp8_e4m3", "s": s, "tflops": 2 * m * k * n / s / 1e12,
                             "gbps": (m * k + k * n) / s / 1e9 + m * n * 2 / s / 1e9})
            except (RuntimeError, TypeError) as exc:
                print(f"gpu_calibration extra: fp8 GEMM {m}x{k}x{n} failed: {str(exc).splitlines()[0]}", file=sys.stderr)
                break
    data["gemm_fp8"] = rows
    save()

    # 5. Host costs of the sorted MoE that the micro-benchmarks above do not isolate (docs/calibration-status.md):
    #    a read-back to the host with the GPU idle (bincount's min/max and .tolist() make three per layer), and
    #    the per-expert Python loop of simulator/calibration/e2e.py prefill_block with tiny per-expert rows, so
    #    that its eager time per iteration is the host's (indexing w[e], two matmuls, GELU).
    ids = torch.randint(0, 16, (65536,), device=dev)
    readback = {}
    for name, fn in (("max_item", lambda: ids.max().item()), ("bincount_tolist", lambda: torch.bincount(ids, minlength=16).tolist())):
        fn(); torch.cuda.synchronize()
        walls = []
        for _ in range(200):
            torch.cuda.synchronize(); t0 = time.perf_counter(); fn(); walls.append(time.perf_counter() - t0)
        readback[name] = statistics.median(walls)
    w1 = torch.randn(16, 512, 1024, device=dev, dtype=torch.float16)
    w2 = torch.randn(16, 1024, 512, device=dev, dtype=torch.float16)
    xs = torch.randn(16 * 16, 512, device=dev, dtype=torch.float16).split([16] * 16)
    loop = lambda: [torch.nn.functional.gelu(xe @ w1[e]) @ w2[e] for e, xe in enumerate(xs)]
    # The same loop with the row counts a real routing gives: different per expert and per call (a GEMM shape cuBLAS
    # has not just seen), as in the seed prefill, whose per-expert loop leaves the GPU idle longer than modelled.
    gen = torch.Generator().manual_seed(0)
    varied = []
    for _ in range(8):
        counts = torch.multinomial(torch.ones(16), 256, replacement=True, generator=gen).bincount(minlength=16).tolist()
        varied.append(torch.randn(256, 512, device=dev, dtype=torch.float16).split(counts))
    turn = [0]
    def loop_varied():
        turn[0] = (turn[0] + 1) % len(varied)
        return [torch.nn.functional.gelu(xe @ w1[e]) @ w2[e] for e, xe in enumerate(varied[turn[0]])]
    data["host_costs"] = {"readback_s": readback, "expert_loop_s_per_expert": events_s(loop, 20) / 16,
                          "expert_loop_varied_rows_s_per_expert": events_s(loop_varied, 24) / 16}
    save()

    # 6. Small GEMMs and decode attention below the calibration tables' first measured sizes, replayed in a
    #    CUDA graph (device time, no dispatch): a check of the fixed part the model gives such kernels
    #    (python -m simulator.calibration.small_kernels raw_extra.json prints model against measurement).
    rows = []
    for k, n in ((512, 1024), (1024, 512), (512, 1536), (4096, 4096)):
        w = torch.randn(k, n, device=dev, dtype=torch.float16)
        for m in ((32, 4096) if quick else (1, 32, 256, 1024, 4096, 16384)):
            a = torch.randn(m, k, device=dev, dtype=torch.float16)
            fn = lambda: a @ w
            rows.append({"kind": "gemm", "M": m, "K": k, "N": n, "s_eager": events_s(fn, 50),
                         "s_graph_per_kernel": graph_per_kernel_s(fn, f"gemm {m}x{k}x{n}", 5), "graph_copies": COPIES})
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for b, h, d in ((32, 16, 32), (32, 8, 128)):
        for kv in ((64, 1024) if quick else (16, 64, 256, 1024, 4096)):
            q = torch.randn(b, h, 1, d, device=dev, dtype=torch.float16)
            kc = torch.randn(b, h, kv, d, device=dev, dtype=torch.float16)
            vc = torch.randn(b, h, kv, d, device=dev, dtype=torch.float16)
            fn = lambda: sdpa(q, kc, vc)
            rows.append({"kind": "decode_attention", "B": b, "H": h, "L": kv, "D": d, "s_eager": events_s(fn, 50),
                         "s_graph_per_kernel": graph_per_kernel_s(fn, f"sdpa B{b} H{h} L{kv} D{d}", 5),
                         "graph_copies": COPIES})
    data["small_kernels"] = rows
    save()

    # 8. Decode attention whose query heads share one KV head (MLA's absorbed decode: 128 heads over a 576-wide
    #    latent, values its first 512), the case the model prices on its FLOPs rather than its KV bytes
    #    (costs.calibrated_attention_s, at the prefill table's fraction). The heads fold into the query length of one
    #    non-causal attention, as FlashMLA and FlashInfer run it; bf16, whatever kernel SDPA picks for d = 576.
    #    TFLOP/s and GB/s of the latent per shape; nothing reads this yet (docs/cost-model.md).
    mla = []
    for b in ((16,) if quick else (16, 64)):
        for kv in ((1024,) if quick else (1024, 4096)):
            q = torch.randn(b, 1, 128, 576, device=dev, dtype=torch.bfloat16)
            lat = torch.randn(b, 1, kv, 576, device=dev, dtype=torch.bfloat16)
            fn = lambda: sdpa(q, lat, lat[..., :512])
            try:
                t = events_s(fn, 10)
            except RuntimeError as exc:
                print(f"gpu_calibration extra: MLA-shaped decode attention failed: {str(exc).splitlines()[0]}",
                      file=sys.stderr)
                break
            flops = 2.0 * b * 128 * kv * (576 + 512)
            mla.append({"B": b, "heads": 128, "L": kv, "d_qk": 576, "d_v": 512, "s": t, "tflops": flops / t / 1e12,
                        "gbps_latent": b * kv * 576 * 2 / t / 1e9})
    data["mla_decode_attention"] = mla
    save()

    # 9. MoE expert GEMMs at the decode shapes of the validation cases, 8-128 rows per expert: the calibration's
    #    kernel (torch.bmm, equal rows, what the profiles' grouped table measured) against PyTorch's grouped GEMM
    #    (torch._grouped_mm, bf16, rows routed unevenly: a multinomial draw of the tokens' top-k picks) and, where
    #    torch has it, its fp8 row-wise one (torch._scaled_grouped_mm); per shape the seconds, TFLOP/s and GB/s of
    #    weights. Whether a grouped MoE kernel at these rows streams its weights as fast as bmm is the first
    #    candidate for TensorRT-LLM's MoE runs being ~1.6x slower than priced (docs/serving-validation.md);
    #    nothing reads this yet.
    moe = []
    shapes = (  # experts a rank holds, K, N: Qwen3 235B under EP4 (fc1, fc2), DeepSeek V3 under EP8, Qwen3 30B
        (32, 4096, 3072), (32, 1536, 4096), (32, 7168, 4096), (32, 2048, 7168), (128, 2048, 1536))
    grouped = getattr(torch, "_grouped_mm", None)
    scaled_grouped = getattr(torch, "_scaled_grouped_mm", None)
    for e, k, n in (shapes[:1] if quick else shapes):
        w = torch.randn(e, k, n, device=dev, dtype=torch.bfloat16)
        w_t = w.transpose(1, 2).contiguous().transpose(1, 2)  # column-major per expert, as _grouped_mm wants
        for rows in ((32,) if quick else (8, 32, 64, 128)):
            x = torch.randn(e, rows, k, device=dev, dtype=torch.bfloat16)
            rec = {"experts": e, "K": k, "N": n, "rows_per_expert": rows}
            try:
                rec["s_bmm"] = events_s(lambda: torch.bmm(x, w), 20)
            except RuntimeError as exc:
                print(f"gpu_calibration extra: bmm {e}x{rows}x{k}x{n} failed: {str(exc).splitlines()[0]}", file=sys.stderr)
            # uneven rows: each of the e * rows token copies picks an expert uniformly (the routing of many tokens),
            # counts rounded up to 16 (the grouped kernels' alignment), the same total within 16 per expert
            counts = torch.bincount(torch.randint(0, e, (e * rows,), device=dev), minlength=e)
            counts = ((counts + 15) // 16) * 16
            offs = torch.cumsum(counts, 0).to(torch.int32)
            xa = torch.randn(int(offs[-1].item()), k, device=dev, dtype=torch.bfloat16)
            rec["rows_routed_max"] = int(counts.max().item())
            rec["rows_routed_total"] = int(offs[-1].item())
            if grouped is not None:
                try:
                    rec["s_grouped_bf16"] = events_s(lambda: grouped(xa, w_t, offs=offs, out_dtype=torch.bfloat16), 20)
                except (RuntimeError, TypeError) as exc:
                    print(f"gpu_calibration extra: _grouped_mm failed: {str(exc).splitlines()[0]}", file=sys.stderr)
            if scaled_grouped is not None and hasattr(torch, "float8_e4m3fn"):
                try:
                    xq = xa.to(torch.float8_e4m3fn)
                    wq = w_t.to(torch.float8_e4m3fn).transpose(1, 2).contiguous().transpose(1, 2)
                    sa = torch.ones(xq.shape[0], device=dev, dtype=torch.float32)
                    sb = torch.ones(e, n, device=dev, dtype=torch.float32)
                    fn = lambda: scaled_grouped(xq, wq, sa, sb, offs=offs, out_dtype=torch.bfloat16)
                    rec["s_grouped_fp8"] = events_s(fn, 20)
                except (RuntimeError, TypeError) as exc:
                    print(f"gpu_calibration extra: _scaled_grouped_mm failed: {str(exc).splitlines()[0]}",
                          file=sys.stderr)
            flops = 2.0 * e * rows * k * n
            for key, wbytes in (("bmm", 2), ("grouped_bf16", 2), ("grouped_fp8", 1)):
                t = rec.get(f"s_{key}")
                if t:
                    rec[f"tflops_{key}"] = flops / t / 1e12
                    rec[f"gbps_weights_{key}"] = e * k * n * wbytes / t / 1e9
            moe.append(rec)
            data["moe_grouped_gemm"] = moe
            save()

    # 10. Sliding-window attention (GPT-OSS: 64 query heads over 8 KV heads of 64, window 128): a prefill of L
    #     tokens with the window against the full causal prefill, both through FlexAttention (one kernel family,
    #     a block mask that skips the tiles outside the mask), bf16. moesim prices a windowed chunk as a causal one
    #     with as many (query, key) pairs (costs.windowed_kv_len) at the same fraction of the peak; a narrow window
    #     wastes part of every tile it touches, which this measures as TFLOP/s over the pairs each scores.
    #     Nothing reads this yet (docs/cost-model.md).
    swa = []
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    except Exception as exc:  # an older torch: no FlexAttention
        print(f"gpu_calibration extra: FlexAttention unavailable: {str(exc).splitlines()[0]}", file=sys.stderr)
        flex = None
    window = 128
    for length in (() if flex is None else ((4096,) if quick else (2048, 8192))):
        q = torch.randn(1, 64, length, 64, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, 8, length, 64, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, 8, length, 64, device=dev, dtype=torch.bfloat16)
        rec = {"L": length, "window": window, "heads": 64, "kv_heads": 8, "head_dim": 64}
        masks = {
            "causal": lambda b, h, qi, ki: qi >= ki,
            "window": lambda b, h, qi, ki: (qi >= ki) & (qi - ki < window),
        }
        pairs = {"causal": length * (length + 1) / 2,
                 "window": sum(min(p + 1, window) for p in range(length))}
        try:
            for name, mod in masks.items():
                mask = create_block_mask(mod, B=None, H=None, Q_LEN=length, KV_LEN=length, device=dev)
                t = events_s(lambda: flex(q, k, v, block_mask=mask, enable_gqa=True), 10)
                rec[f"s_{name}"] = t
                rec[f"tflops_{name}"] = 4.0 * 64 * pairs[name] * 64 / t / 1e12  # QK^T and PV, 2 FLOPs each
        except Exception as exc:
            print(f"gpu_calibration extra: sliding-window attention L{length} failed: {str(exc).splitlines()[0]}",
                  file=sys.stderr)
        swa.append(rec)
        data["sliding_window_attention"] = swa
        save()

    # 7. Sustained GEMM rate: the largest GEMM back to back for SUSTAIN_S seconds per format (bf16, then fp8), its
    #    rate per ~0.5 s window, with the SM clock and board power sampled by nvidia-smi from a side thread (the GPU
    #    never waits for it). The micro-benchmarks above time 20 calls after warm-up; a serving engine's
    #    compute-bound iterations run for minutes. Whether the clock falls under a sustained fp8 load is what the
    #    offline fp8 cases' gap (docs/serving-validation.md, ~1.4x) needs to know; nothing reads this yet.
    import subprocess, threading
    def smi_samples(stop, samples, t0):
        while not stop.is_set():
            try:
                got = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                                      "-i", str(torch.cuda.current_device())], capture_output=True, text=True, timeout=5)
                clock, power = (float(x) for x in got.stdout.strip().splitlines()[0].split(","))
                samples.append({"t_s": time.perf_counter() - t0, "sm_clock_mhz": clock, "power_w": power})
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            stop.wait(0.5)
    sustain_s = float(os.environ.get("SUSTAIN_S", "3" if quick else "10"))
    mats = {"bf16": lambda m: torch.randn(m, m, device=dev, dtype=torch.bfloat16)}
    if fp8 is not None and hasattr(torch, "_scaled_mm"):
        mats["fp8_e4m3"] = lambda m: torch.randn(m, m, device=dev, dtype=torch.float16).to(fp8)
    sustained = []
    for fmt, make in mats.items():
        m = 8192
        a, b = make(m), make(m)
        if fmt == "bf16":
            fn = lambda: a @ b
        else:
            bt = b.t()
            fn = lambda: torch._scaled_mm(a, bt, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)
        try:
            per_call = events_s(fn, 5)
        except (RuntimeError, TypeError) as exc:
            print(f"gpu_calibration extra: sustained {fmt} GEMM failed: {str(exc).splitlines()[0]}", file=sys.stderr)
            continue
        calls = max(1, int(0.5 / per_call))
        windows, samples, stop = [], [], threading.Event()
        t0 = time.perf_counter()
        sampler = threading.Thread(target=smi_samples, args=(stop, samples, t0), daemon=True)
        sampler.start()
        while time.perf_counter() - t0 < sustain_s:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(calls):
                fn()
            e1.record(); e1.synchronize()
            windows.append({"t_s": time.perf_counter() - t0,
                            "tflops": 2 * m ** 3 * calls / (e0.elapsed_time(e1) / 1e3) / 1e12})
        stop.set(); sampler.join(timeout=10)
        sustained.append({"format": fmt, "M": m, "K": m, "N": m, "calls_per_window": calls, "windows": windows,
                          "smi": list(samples)})
        data["sustained_gemm"] = sustained
        save()
for r in data.get("graph_kernels", []):
    g = "-" if r["s_graph_per_kernel"] is None else f"{r['s_graph_per_kernel'] * 1e6:.2f} us"
    print(f"kernel {r['op']:22} eager {r['s_eager'] * 1e6:7.2f} us   in a graph {g}")
gl = data.get("graph_launch", {})
if gl:
    print(f"graph launch (1 kernel, synced) {gl['s_replay_1_kernel_synced'] * 1e6:.1f} us; sync alone {gl['s_sync_only'] * 1e6:.1f} us")
for r in data.get("scatter_add", []):
    print(f"scatter-add {r['tokens']}x2 rows of {r['hidden']}: {r['s_graph'] * 1e6:.1f} us = {1 / r['s_per_byte'] / 1e9:.0f} GB/s of input")
hc = data.get("host_costs", {})
for name, wall in hc.get("readback_s", {}).items():
    print(f"read-back {name}: {wall * 1e6:.1f} us wall, GPU idle")
if hc:
    print(f"sorted-MoE expert loop, tiny rows: {hc['expert_loop_s_per_expert'] * 1e6:.1f} us per expert (host)")
    if "expert_loop_varied_rows_s_per_expert" in hc:
        print(f"  with routed row counts (new shapes): {hc['expert_loop_varied_rows_s_per_expert'] * 1e6:.1f} us per expert")
for r in data.get("mla_decode_attention", []):
    print(f"MLA-shaped decode attention B{r['B']} L{r['L']}: {r['s'] * 1e6:.1f} us, {r['tflops']:.0f} TFLOP/s, "
          f"{r['gbps_latent']:.0f} GB/s of latent")
for r in data.get("moe_grouped_gemm", []):
    parts = [f"{key} {r['gbps_weights_' + key]:.0f} GB/s" for key in ("bmm", "grouped_bf16", "grouped_fp8")
             if "gbps_weights_" + key in r]
    print(f"MoE GEMM {r['experts']}x[{r['K']}x{r['N']}] at {r['rows_per_expert']} rows an expert: "
          + (", ".join(parts) or "not measured") + " of weights")
for r in data.get("sliding_window_attention", []):
    if "tflops_window" in r and "tflops_causal" in r:
        print(f"sliding-window prefill L{r['L']} window {r['window']}: {r['tflops_window']:.0f} TFLOP/s over its pairs "
              f"against {r['tflops_causal']:.0f} causal ({r['tflops_window'] / r['tflops_causal']:.2f}x)")
best = max((r["tflops"] for r in data.get("gemm_fp8", [])), default=float("nan"))
print(f"fp8 GEMM best {best:.0f} TFLOP/s over {len(data.get('gemm_fp8', []))} shapes")
for r in data.get("sustained_gemm", []):
    w, smi = r["windows"], r["smi"]
    clocks = f", SM clock {smi[0]['sm_clock_mhz']:.0f} -> {smi[-1]['sm_clock_mhz']:.0f} MHz, " \
             f"power {smi[0]['power_w']:.0f} -> {smi[-1]['power_w']:.0f} W" if smi else " (no nvidia-smi samples)"
    print(f"sustained {r['format']} 8192^3: {w[0]['tflops']:.0f} -> {w[-1]['tflops']:.0f} TFLOP/s over "
          f"{w[-1]['t_s']:.1f} s{clocks}")
PY
extra_rc=$?
echo "gpu_calibration: extra benchmarks exit $extra_rc after $(( $(date +%s) - extra_start )) s (budget ${EXTRA_BUDGET_S} s)"
# The kernels' fixed part (small GEMMs, decode attention) against their measured device time in a graph.
[ -f "$OUT/raw_extra.json" ] && "$PY" -m simulator.calibration.small_kernels "$OUT/raw_extra.json" || true
echo "gpu_calibration: refit the profiles from these files with:"
echo "  DATA=$OUT/raw_micro.json HOST_CALLS=$OUT/raw_host_calls.json EXTRA=$OUT/raw_extra.json bash scripts/refit_profiles.sh"
exit "$rc"
