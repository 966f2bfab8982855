import Dispatch
import Foundation
import HydraCore
import HydraKernelsCPU
import XCTest

/// A timing report run by hand, not a test:
///
///     HYDRA_KERNEL_TIMING=1 swift test -c release --scratch-path .build-cpu \
///       --filter KernelsTests.KernelTimingTests
///
/// Prints sgemm GFLOP/s at 1024^3 and, for one GPT layer at B=8, T=128, C=384, heads=6, the time of
/// its matrix products (forward and backward) against the other kernels of the layer.
final class KernelTimingTests: XCTestCase {
  /// Best of `reps` runs, in seconds.
  func time(reps: Int = 7, _ body: () -> Void) -> Double {
    body()  // warm up
    var best = Double.infinity
    for _ in 0..<reps {
      let start = DispatchTime.now().uptimeNanoseconds
      body()
      best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
    }
    return best
  }

  func ms(_ s: Double) -> String { String(format: "%8.3f ms", s * 1e3) }

  func testTimingReport() throws {
    try XCTSkipUnless(
      ProcessInfo.processInfo.environment["HYDRA_KERNEL_TIMING"] == "1",
      "set HYDRA_KERNEL_TIMING=1 (and build with -c release) for the timing report")
    let threadCounts = (ProcessInfo.processInfo.environment["HYDRA_KERNEL_TIMING_THREADS"] ?? "1,2")
      .split(separator: ",").compactMap { Int($0) }
    for threads in threadCounts { report(threads: threads) }
  }

  func report(threads: Int) {
    let k = CPUKernels(threads: threads)
    var rng = TestRandom(7)
    print("== cpu kernels, threads \(threads) ==")

    let n = 1024
    let a = Buf(rng.normal(n * n)), b = Buf(rng.normal(n * n)), c = Buf(count: n * n)
    let tg = time(reps: 5) {
      k.gemm(
        transA: false, transB: false, m: n, n: n, k: n, alpha: 1, a: a.c, lda: n, b: b.c, ldb: n, beta: 0, c: c.p,
        ldc: n)
    }
    print(String(format: "sgemm 1024^3: %.1f GFLOP/s", 2 * pow(Double(n), 3) / tg / 1e9))

    // One GPT layer.
    let (B, T, C, H) = (8, 128, 384, 6)
    let R = B * T
    let x = Buf(rng.normal(R * C)), dy = Buf(rng.normal(R * 4 * C))
    let wqkv = Buf(rng.normal(C * 3 * C, std: 0.02)), wproj = Buf(rng.normal(C * C, std: 0.02))
    let wfc = Buf(rng.normal(C * 4 * C, std: 0.02)), wfcp = Buf(rng.normal(4 * C * C, std: 0.02))
    let out = Buf(count: R * 4 * C), dx = Buf(count: R * 4 * C), dw = Buf(count: 4 * C * C)
    // (rows of W as stored (in, out), in, out) for the four linear layers.
    let linears = [(wqkv, C, 3 * C), (wproj, C, C), (wfc, C, 4 * C), (wfcp, 4 * C, C)]
    let tFwd = time {
      for (w, i, o) in linears {
        k.gemm(
          transA: false, transB: false, m: R, n: o, k: i, alpha: 1, a: x.c, lda: i, b: w.c, ldb: o, beta: 0, c: out.p,
          ldc: o)
      }
    }
    let tBwd = time {
      for (w, i, o) in linears {
        // dX = dY W^T; dW += X^T dY.
        k.gemm(
          transA: false, transB: true, m: R, n: i, k: o, alpha: 1, a: dy.c, lda: o, b: w.c, ldb: o, beta: 0, c: dx.p,
          ldc: i)
        k.gemm(
          transA: true, transB: false, m: i, n: o, k: R, alpha: 1, a: x.c, lda: i, b: dy.c, ldb: o, beta: 1, c: dw.p,
          ldc: o)
      }
    }
    let flopsFwd = 2.0 * Double(R) * Double(C * 3 * C + C * C + 2 * C * 4 * C)
    print(
      "layer matmuls (B=8 T=128 C=384): forward \(ms(tFwd)) (\(String(format: "%.1f", flopsFwd / tFwd / 1e9)) GFLOP/s), "
        + "backward \(ms(tBwd)) (\(String(format: "%.1f", 2 * flopsFwd / tBwd / 1e9)) GFLOP/s), total \(ms(tFwd + tBwd))"
    )

    let qkv = Buf(rng.normal(R * 3 * C)), aout = Buf(count: R * C), probs = Buf(count: B * H * T * T)
    let scratch = Buf(count: B * H * T * T), dqkv = Buf(count: R * 3 * C)
    let tAttF = time {
      k.attentionForward(qkv: qkv.c, out: aout.p, probs: probs.p, batch: B, seq: T, channels: C, heads: H)
    }
    let tAttB = time {
      k.attentionBackward(
        dout: x.c, qkv: qkv.c, probs: probs.c, dqkv: dqkv.p, scratch: scratch.p, batch: B, seq: T, channels: C, heads: H
      )
    }
    // The sgemm part of attention: causal flops (full T x T would be twice that) per (b, h):
    // forward QK^T + PV, backward four products.
    let attFlops = Double(B * H) * 2 * Double(T * T) * Double(C / H) * 0.5 * 6
    // The same sgemm calls alone (64-row causal blocks, as in CPUKernels), forward then backward.
    let hs = C / H
    func attentionGemms(forward: Bool) {
      for bh in 0..<(B * H) {
        let b = bh / H, h = bh % H
        let q = qkv.c + b * T * 3 * C + h * hs, p = probs.p + bh * T * T
        let o = aout.p + b * T * C + h * hs, d = dqkv.p + b * T * 3 * C + h * hs
        var r0 = 0
        while r0 < T {
          let r1 = min(T, r0 + 64), m = r1 - r0
          if forward {
            k.gemm(
              transA: false, transB: true, m: m, n: r1, k: hs, alpha: 1, a: q + r0 * 3 * C, lda: 3 * C, b: q + C,
              ldb: 3 * C, beta: 0, c: p + r0 * T, ldc: T)
            k.gemm(
              transA: false, transB: false, m: m, n: hs, k: r1, alpha: 1, a: p + r0 * T, lda: T, b: q + 2 * C,
              ldb: 3 * C, beta: 0, c: o + r0 * C, ldc: C)
          } else {
            k.gemm(
              transA: false, transB: true, m: m, n: r1, k: hs, alpha: 1, a: x.c + r0 * C, lda: C, b: q + 2 * C,
              ldb: 3 * C, beta: 0, c: scratch.p + bh * T * T + r0 * T, ldc: T)
            k.gemm(
              transA: true, transB: false, m: m, n: hs, k: T - r0, alpha: 1, a: p + r0 * T + r0, lda: T,
              b: x.c + r0 * C, ldb: C, beta: 0, c: d + 2 * C + r0 * 3 * C, ldc: 3 * C)
            k.gemm(
              transA: false, transB: false, m: m, n: hs, k: r1, alpha: 1, a: p + r0 * T, lda: T, b: q + C, ldb: 3 * C,
              beta: 0, c: d + r0 * 3 * C, ldc: 3 * C)
            k.gemm(
              transA: true, transB: false, m: m, n: hs, k: T - r0, alpha: 1, a: p + r0 * T + r0, lda: T,
              b: q + r0 * 3 * C, ldb: 3 * C, beta: 0, c: d + C + r0 * 3 * C, ldc: 3 * C)
          }
          r0 = r1
        }
      }
    }
    let tAttGemmF = time { attentionGemms(forward: true) }
    let tAttGemmB = time { attentionGemms(forward: false) }

    let g = R * 4 * C
    let tGelu = time {
      k.geluForward(x.c, out.p, count: g)
      k.geluBackward(x.c, dy.c, dx.p, count: g)
    }
    let gamma = Buf(rng.normal(C)), beta = Buf(rng.normal(C)), mean = Buf(count: R), rstd = Buf(count: R)
    let dg = Buf(count: C), db = Buf(count: C)
    let tLN = time {
      k.layerNormForward(
        x.c, gamma: gamma.c, beta: beta.c, out.p, mean: mean.p, rstd: rstd.p, rows: R, cols: C, eps: 1e-5)
      k.layerNormBackward(
        dy.c, x.c, gamma: gamma.c, mean: mean.c, rstd: rstd.c, dx: dx.p, dgamma: dg.p, dbeta: db.p, rows: R, cols: C)
    }
    // Bias add and gradient for the four linears, two residual adds (forward) and accumulates.
    let tBias = time {
      for (_, _, o) in linears {
        k.addBias(out.p, bias: dy.c, rows: R, cols: o)
        k.accumulateBiasGradient(dy.c, rows: R, cols: o, into: dw.p)
      }
      k.add(x.c, aout.c, aout.p, count: R * C)
      k.add(x.c, aout.c, aout.p, count: R * C)
      k.accumulate(x.c, into: aout.p, count: R * C)
      k.accumulate(x.c, into: aout.p, count: R * C)
    }
    print(
      "attention forward \(ms(tAttF)), backward \(ms(tAttB)) (its own sgemms: \(String(format: "%.0f", attFlops / 1e6)) MFLOP causal)"
    )
    print(
      "  of which the same sgemm calls alone: forward \(ms(tAttGemmF)), backward \(ms(tAttGemmB)); softmax and dS: \(ms(tAttF + tAttB - tAttGemmF - tAttGemmB))"
    )
    print("gelu fwd+bwd (8*128*1536)      \(ms(tGelu))")
    print("layernorm fwd+bwd (8*128*384)  \(ms(tLN)) per LayerNorm (a layer has 2)")
    print("bias + residual adds           \(ms(tBias))")
    let matmul = tFwd + tBwd
    let others = tGelu + 2 * tLN + tBias + (tAttF + tAttB - tAttGemmF - tAttGemmB)
    print(
      String(
        format:
          "non-matmul kernels (gelu + 2 layernorm + bias/residual + attention softmax/dS): %.3f ms = %.1f%% of the layer matmuls (%.3f ms)",
        others * 1e3, 100 * others / matmul, matmul * 1e3))
    print(
      String(
        format: "attention (fwd+bwd, its sgemms included): %.3f ms = %.1f%% of the layer matmuls",
        (tAttF + tAttB) * 1e3, 100 * (tAttF + tAttB) / matmul))
  }
}

/// Calls every kernel `HYDRA_KERNEL_ALLOC_REPS` times on preallocated buffers, for counting heap
/// allocations by hand (not a test), e.g. under valgrind with 1 and 11 repetitions:
///
///     HYDRA_KERNEL_ALLOC_REPS=11 valgrind .build-cpu/debug/hydra-mpiPackageTests.xctest \
///       KernelsTests.KernelAllocationProbe 2>&1 | grep 'total heap usage'
///
/// The difference between the two counts, over 10, is the allocations per call of every kernel;
/// `HYDRA_KERNEL_ALLOC_ONLY=i` calls only the i-th (1-based, in the order below). Measured with an
/// LD_PRELOAD malloc counter (valgrind cannot read Swift 6.3's DWARF 5): none per call at threads 1;
/// at threads 2 and more, one per call that uses the pool (the box `withoutActuallyEscaping` makes
/// around the tasks' closure), none per task and none from OpenBLAS (kept at one thread).
final class KernelAllocationProbe: XCTestCase {
  func testCallEveryKernel() throws {
    guard let reps = ProcessInfo.processInfo.environment["HYDRA_KERNEL_ALLOC_REPS"].flatMap({ Int($0) }) else {
      throw XCTSkip("set HYDRA_KERNEL_ALLOC_REPS=n to call every kernel n times")
    }
    let threads = Int(ProcessInfo.processInfo.environment["HYDRA_KERNEL_ALLOC_THREADS"] ?? "2") ?? 2
    let k = CPUKernels(threads: threads)
    let (B, T, C, H, V) = (2, 64, 64, 2, 50)
    let R = B * T, n = R * 4 * C
    let x = Buf(count: n, value: 0.5), y = Buf(count: n), d = Buf(count: n, value: 0.25)
    let w = Buf(count: 4 * C * C, value: 0.01), probs = Buf(count: B * H * T * T), scratch = Buf(count: B * H * T * T)
    let stats = Buf(count: 2 * R), small = Buf(count: 4 * C)
    let tokens = [Int32](repeating: 3, count: R)
    tokens.withUnsafeBufferPointer { tok in
      let only = ProcessInfo.processInfo.environment["HYDRA_KERNEL_ALLOC_ONLY"].flatMap { Int($0) }
      for _ in 0..<reps {
        if only == nil || only == 1 {
          k.gemm(
            transA: false, transB: true, m: R, n: C, k: C, alpha: 1, a: x.c, lda: C, b: w.c, ldb: C, beta: 0, c: y.p,
            ldc: C)
        }
        if only == nil || only == 2 {
          k.gemmBatched(
            transA: false, transB: false, m: 8, n: 8, k: 8, alpha: 1, a: x.c, lda: 8, strideA: 64, b: w.c, ldb: 8,
            strideB: 64, beta: 1, c: y.p, ldc: 8, strideC: 64, batch: 4)
        }
        if only == nil || only == 3 { k.addBias(y.p, bias: small.c, rows: R, cols: C) }
        if only == nil || only == 4 { k.accumulateBiasGradient(d.c, rows: R, cols: C, into: small.p) }
        if only == nil || only == 5 { k.geluForward(x.c, y.p, count: n) }
        if only == nil || only == 6 { k.geluBackward(x.c, d.c, y.p, count: n) }
        if only == nil || only == 7 { k.reluForward(x.c, y.p, count: n) }
        if only == nil || only == 8 { k.reluBackward(x.c, d.c, y.p, count: n) }
        if only == nil || only == 9 {
          k.layerNormForward(
            x.c, gamma: small.c, beta: small.c, y.p, mean: stats.p, rstd: stats.p + R, rows: R, cols: C, eps: 1e-5)
        }
        if only == nil || only == 10 {
          k.layerNormBackward(
            d.c, x.c, gamma: small.c, mean: stats.c, rstd: stats.c + R, dx: y.p, dgamma: small.p, dbeta: small.p + C,
            rows: R, cols: C)
        }
        if only == nil || only == 11 {
          k.attentionForward(qkv: x.c, out: y.p, probs: probs.p, batch: B, seq: T, channels: C, heads: H)
        }
        if only == nil || only == 12 {
          k.attentionBackward(
            dout: d.c, qkv: x.c, probs: probs.c, dqkv: y.p, scratch: scratch.p, batch: B, seq: T, channels: C, heads: H)
        }
        if only == nil || only == 13 {
          k.embeddingForward(tokens: tok.baseAddress!, wte: x.c, wpe: x.c, out: y.p, batch: B, seq: T, channels: C)
        }
        if only == nil || only == 14 {
          k.embeddingBackward(
            dout: d.c, tokens: tok.baseAddress!, dwte: y.p, dwpe: y.p + V * C, batch: B, seq: T, channels: C)
        }
        if only == nil || only == 15 {
          _ = k.softmaxCrossEntropy(
            logits: x.c, targets: tok.baseAddress!, rows: R, classes: V, dlogits: y.p, gradScale: 1)
        }
        if only == nil || only == 16 { k.add(x.c, d.c, y.p, count: n) }
        if only == nil || only == 17 { k.accumulate(x.c, into: y.p, count: n) }
        if only == nil || only == 18 { k.copy(x.c, y.p, count: n) }
        if only == nil || only == 19 { k.fill(y.p, value: 1, count: n) }
        if only == nil || only == 20 { k.scale(y.p, by: 0.5, count: n) }
        if only == nil || only == 21 { _ = k.sumOfSquares(x.c, count: n) }
        if only == nil || only == 22 {
          k.sgdStep(
            param: y.p, grad: d.c, momentumBuffer: scratch.p, count: n / 2, lr: 0.1, momentum: 0.9, weightDecay: 0,
            step: 2)
        }
        if only == nil || only == 23 {
          k.adamwStep(
            param: y.p, grad: d.c, m: scratch.p, v: probs.p, count: n / 4, lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8,
            weightDecay: 0, step: 2)
        }
      }
    }
  }
}
