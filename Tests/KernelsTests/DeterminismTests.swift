import Dispatch
import HydraCore
import HydraKernelsCPU
import XCTest

/// Same inputs and threads => the same bits, every call (the contract); and, beyond it, the same bits
/// at every thread count, products and attention included (the cpu kernels cut work by sizes only).
/// Sizes are large enough that every kernel takes its multi-threaded path at 2 threads and above.
final class DeterminismTests: XCTestCase {
  /// Runs every kernel on fixed inputs (accumulating outputs start from fixed contents) and
  /// returns all outputs, scalar results encoded as floats' bits.
  func runAll(_ k: CPUKernels, blas: Bool) -> [(String, [Float])] {
    var rng = TestRandom(99)
    var results = [(String, [Float])]()
    let (rows, cols) = (512, 384)
    let n = rows * cols
    let x = Buf(rng.normal(n)), dy = Buf(rng.normal(n))

    if blas {
      // Cut into pieces along rows, then along columns.
      let (m, nn, kk) = (600, 160, 384)
      let a = Buf(rng.normal(m * kk)), b = Buf(rng.normal(kk * nn)), c = Buf(rng.normal(m * nn))
      k.gemm(
        transA: false, transB: false, m: m, n: nn, k: kk, alpha: 0.5, a: a.c, lda: kk, b: b.c, ldb: nn, beta: 0.5,
        c: c.p, ldc: nn)
      results.append(("gemm", c.array))
      let c2 = Buf(rng.normal(96 * 500))
      k.gemm(
        transA: true, transB: true, m: 96, n: 500, k: 100, alpha: 1, a: dy.c, lda: 96, b: x.c, ldb: 100, beta: 0,
        c: c2.p, ldc: 500)
      results.append(("gemm along columns", c2.array))
      // A weight gradient's shape: cut along k (5 pieces, partial products added in order).
      let c3 = Buf(rng.normal(96 * 120))
      k.gemm(
        transA: true, transB: false, m: 96, n: 120, k: 1300, alpha: 1, a: dy.c, lda: 96, b: x.c, ldb: 120, beta: 1,
        c: c3.p, ldc: 120)
      results.append(("gemm along k", c3.array))
      let cb = Buf(rng.normal(2 * 64 * 64))
      k.gemmBatched(
        transA: true, transB: false, m: 64, n: 64, k: 64, alpha: 1, a: a.c, lda: 64, strideA: 4096,
        b: b.c, ldb: 64, strideB: 4096, beta: 1, c: cb.p, ldc: 64, strideC: 4096, batch: 2)
      results.append(("gemmBatched", cb.array))
      let (B, T, C, H) = (4, 128, 96, 3)
      let qkv = Buf(rng.normal(B * T * 3 * C)), out = Buf(count: B * T * C), probs = Buf(count: B * H * T * T)
      k.attentionForward(qkv: qkv.c, out: out.p, probs: probs.p, batch: B, seq: T, channels: C, heads: H)
      results.append(("attention out", out.array))
      results.append(("attention probs", probs.array))
      let dout = Buf(rng.normal(B * T * C)), dqkv = Buf(count: B * T * 3 * C), scratch = Buf(count: B * H * T * T)
      k.attentionBackward(
        dout: dout.c, qkv: qkv.c, probs: probs.c, dqkv: dqkv.p, scratch: scratch.p, batch: B, seq: T,
        channels: C, heads: H)
      results.append(("attention dqkv", dqkv.array))
    }

    let y = Buf(x.array)
    let bias = Buf(rng.normal(cols))
    k.addBias(y.p, bias: bias.c, rows: rows, cols: cols)
    results.append(("addBias", y.array))
    let dbias = Buf(rng.normal(cols))
    k.accumulateBiasGradient(dy.c, rows: rows, cols: cols, into: dbias.p)
    results.append(("biasGradient", dbias.array))

    let o = Buf(count: n)
    k.geluForward(x.c, o.p, count: n)
    results.append(("gelu", o.array))
    k.geluBackward(x.c, dy.c, o.p, count: n)
    results.append(("geluBackward", o.array))
    k.reluForward(x.c, o.p, count: n)
    results.append(("relu", o.array))
    k.reluBackward(x.c, dy.c, o.p, count: n)
    results.append(("reluBackward", o.array))

    let gamma = Buf(rng.normal(cols)), beta = Buf(rng.normal(cols))
    let mean = Buf(count: rows), rstd = Buf(count: rows)
    k.layerNormForward(
      x.c, gamma: gamma.c, beta: beta.c, o.p, mean: mean.p, rstd: rstd.p, rows: rows, cols: cols, eps: 1e-5)
    results.append(("layerNorm", o.array + mean.array + rstd.array))
    let dx = Buf(rng.normal(n)), dg = Buf(rng.normal(cols)), db = Buf(rng.normal(cols))
    k.layerNormBackward(
      dy.c, x.c, gamma: gamma.c, mean: mean.c, rstd: rstd.c, dx: dx.p, dgamma: dg.p, dbeta: db.p, rows: rows, cols: cols
    )
    results.append(("layerNormBackward", dx.array + dg.array + db.array))

    let (B, T, vocab) = (4, 128, 7)
    let tokens = rng.ints(B * T, below: vocab)
    let wte = Buf(rng.normal(vocab * cols)), wpe = Buf(rng.normal(T * cols))
    let emb = Buf(count: B * T * cols), dwte = Buf(rng.normal(vocab * cols)), dwpe = Buf(rng.normal(T * cols))
    tokens.withUnsafeBufferPointer { t in
      k.embeddingForward(tokens: t.baseAddress!, wte: wte.c, wpe: wpe.c, out: emb.p, batch: B, seq: T, channels: cols)
      k.embeddingBackward(
        dout: dy.c, tokens: t.baseAddress!, dwte: dwte.p, dwpe: dwpe.p, batch: B, seq: T, channels: cols)
    }
    results.append(("embedding", emb.array))
    results.append(("embeddingBackward", dwte.array + dwpe.array))

    let classes = 1000
    let logits = Buf(rng.normal(256 * classes, std: 3)), targets = rng.ints(256, below: classes)
    let dlogits = Buf(count: 256 * classes)
    let ce = targets.withUnsafeBufferPointer {
      k.softmaxCrossEntropy(
        logits: logits.c, targets: $0.baseAddress!, rows: 256, classes: classes, dlogits: dlogits.p,
        gradScale: 1.0 / 256)
    }
    let lossBits = ce.loss.bitPattern
    results.append(
      (
        "crossEntropy",
        dlogits.array + [
          Float(bitPattern: UInt32(lossBits >> 32)), Float(bitPattern: UInt32(lossBits & 0xFFFF_FFFF)),
          Float(ce.correct),
        ]
      ))

    let ss = k.sumOfSquares(x.c, count: n).bitPattern
    results.append(
      ("sumOfSquares", [Float(bitPattern: UInt32(ss >> 32)), Float(bitPattern: UInt32(ss & 0xFFFF_FFFF))]))

    let sum = Buf(count: n)
    k.add(x.c, dy.c, sum.p, count: n)
    k.accumulate(x.c, into: sum.p, count: n)
    k.scale(sum.p, by: 0.7, count: n)
    results.append(("add/accumulate/scale", sum.array))

    let p = Buf(x.array), mom = Buf(count: n)
    k.sgdStep(
      param: p.p, grad: dy.c, momentumBuffer: mom.p, count: n, lr: 0.1, momentum: 0.9, weightDecay: 0.01, step: 1)
    k.sgdStep(
      param: p.p, grad: x.c, momentumBuffer: mom.p, count: n, lr: 0.1, momentum: 0.9, weightDecay: 0.01, step: 2)
    results.append(("sgd", p.array + mom.array))
    let pa = Buf(x.array), am = Buf(count: n), av = Buf(count: n)
    for step in 1...2 {
      k.adamwStep(
        param: pa.p, grad: dy.c, m: am.p, v: av.p, count: n, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8,
        weightDecay: 0.1, step: step)
    }
    results.append(("adamw", pa.array + am.array + av.array))
    return results
  }

  func testEveryKernelTwiceGivesTheSameBitsAtEveryThreadCount() {
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      let first = runAll(cpu, blas: true)
      let second = runAll(cpu, blas: true)
      for (a, b) in zip(first, second) { assertBitwise(a.1, b.1, "\(a.0) called twice at threads \(threads)") }
    }
  }

  /// Beyond the contract, and what README promises: no result depends on `threads`.
  func testNoKernelDependsOnThreads() {
    let one = runAll(CPUKernels(threads: 1), blas: true)
    for threads in testThreads.dropFirst() + [8] {
      let other = runAll(CPUKernels(threads: threads), blas: true)
      for (a, b) in zip(one, other) { assertBitwise(b.1, a.1, "\(a.0) at threads \(threads) against 1") }
    }
  }

  /// Two threads calling one instance at once (devices sharing it): one of them finds the pool busy
  /// and runs alone; both get the bits of a call made alone.
  func testConcurrentCallersOnOneInstanceGetTheSameBits() {
    let cpu = CPUKernels(threads: 2)
    let alone = runAll(cpu, blas: true)
    let results = UnsafeMutablePointer<[(String, [Float])]>.allocate(capacity: 4)
    results.initialize(repeating: [], count: 4)
    defer {
      results.deinitialize(count: 4)
      results.deallocate()
    }
    DispatchQueue.concurrentPerform(iterations: 4) { i in results[i] = self.runAll(cpu, blas: true) }
    for i in 0..<4 {
      for (a, b) in zip(alone, results[i]) { assertBitwise(b.1, a.1, "\(a.0) in concurrent caller \(i)") }
    }
  }
}
