import CBLAS
import HydraCore
import HydraKernelsCPU
import HydraKernelsReference
import XCTest

/// Every kernel of the `cpu` plugin against the reference oracle, on seeded random data and awkward
/// shapes, at 1 to 4 threads (`testThreads`): sizes not divisible by the threads, products large
/// enough to be cut into pieces along rows or columns, one head, more heads than rows.
///
/// Tolerances: the reference sums in Double, the cpu kernels in Float (OpenBLAS, SIMD lanes), so a
/// sum of k terms of size ~1 differs by about sqrt(k) ulp typically and k ulp at worst; for k <= 512
/// and inputs of size ~1 that is below 1e-4 * (1 + |value|). Kernels that do one rounding per element
/// (copy, add, relu, embeddings, sgd) must match bit for bit.
final class CPUKernelsTests: XCTestCase {
  let ref = ReferenceKernels()

  // MARK: gemm

  func testGemmAllTransposesAgainstReference() {
    var rng = TestRandom(1)
    // From (333, 77, 129) on, they are cut into pieces (`CPUKernels.productSplit`): along rows (the
    // last piece short), along columns, along rows of a thin C; then along k alone (two pieces, 512
    // and 488), and along k (seven pieces, the last 272) and columns (256 and 44) at once.
    let shapes = [
      (1, 1, 1), (7, 13, 31), (31, 7, 13), (64, 33, 129), (5, 17, 512), (13, 1, 7), (333, 77, 129), (45, 1000, 97),
      (500, 17, 300), (33, 70, 1000), (150, 300, 2000),
    ]
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for (m, n, k) in shapes {
        for transA in [false, true] {
          for transB in [false, true] {
            for (alpha, beta) in [(Float(0.7), Float(-1.3)), (1, 0)] {
              let lda = (transA ? m : k) + 3
              let ldb = (transB ? k : n) + 5
              let ldc = n + 2
              let a = Buf(rng.uniform((transA ? k : m) * lda))
              let b = Buf(rng.uniform((transB ? n : k) * ldb))
              // With beta = 0 the prior contents must be ignored, NaN included.
              let c0 = beta == 0 ? [Float](repeating: .nan, count: m * ldc) : rng.uniform(m * ldc)
              let c1 = Buf(c0), c2 = Buf(c0)
              cpu.gemm(
                transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a.c, lda: lda,
                b: b.c, ldb: ldb, beta: beta, c: c1.p, ldc: ldc)
              ref.gemm(
                transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a.c, lda: lda,
                b: b.c, ldb: ldb, beta: beta, c: c2.p, ldc: ldc)
              let what = "gemm t\(threads) \(m)x\(n)x\(k) tA \(transA) tB \(transB) beta \(beta)"
              // Compare the m x n part; the padding columns must be untouched.
              var got = [Float](), want = [Float]()
              for i in 0..<m {
                for j in 0..<n {
                  got.append(c1.p[i * ldc + j])
                  want.append(c2.p[i * ldc + j])
                }
                for j in n..<ldc {
                  XCTAssertEqual(c1.p[i * ldc + j].bitPattern, c0[i * ldc + j].bitPattern, "\(what): padding")
                }
              }
              assertClose(got, want, tol: 1e-5 * Float(max(k, 8)).squareRoot(), what)
            }
          }
        }
      }
    }
  }

  /// Beta 0 is run as zeros and beta 1 (no `sgemm_beta` pass): the bits must be those of OpenBLAS's
  /// own beta-0 call, over NaN, with the padding between rows left alone. Shapes of one piece each
  /// (an attention head's product, a small layer's), every transpose.
  func testGemmWithBetaZeroHasTheBitsOfOpenBLASsOwnCall() {
    var rng = TestRandom(5)
    let cpu = CPUKernels(threads: 2)
    for (m, n, k) in [(64, 64, 32), (64, 32, 64), (200, 100, 50)] {
      for transA in [false, true] {
        for transB in [false, true] {
          for ldc in [n, n + 3] {
            let lda = transA ? m : k, ldb = transB ? k : n
            let a = Buf(rng.normal((transA ? k : m) * lda)), b = Buf(rng.normal((transB ? n : k) * ldb))
            let ours = Buf([Float](repeating: .nan, count: m * ldc))
            let theirs = Buf([Float](repeating: .nan, count: m * ldc))
            cpu.gemm(
              transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.75, a: a.c, lda: lda, b: b.c, ldb: ldb,
              beta: 0, c: ours.p, ldc: ldc)
            cblas_sgemm(
              CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m),
              Int32(n), Int32(k), 0.75, a.c, Int32(lda), b.c, Int32(ldb), 0, theirs.p, Int32(ldc))
            // Padding (NaN in both) compares equal by bits too.
            assertBitwise(ours.array, theirs.array, "gemm beta 0 \(m)x\(n)x\(k) tA \(transA) tB \(transB) ldc \(ldc)")
          }
        }
      }
    }
  }

  func testGemmWithEmptyInnerDimension() {
    let cpu = CPUKernels()
    let c = Buf([1, 2, 3, 4, 5, 6]), a = Buf(count: 1), b = Buf(count: 1)
    cpu.gemm(
      transA: false, transB: false, m: 2, n: 2, k: 0, alpha: 1, a: a.c, lda: 0, b: b.c, ldb: 2, beta: 0.5, c: c.p,
      ldc: 3)
    XCTAssertEqual(c.array, [0.5, 1, 3, 2, 2.5, 6])
    cpu.gemm(
      transA: false, transB: false, m: 2, n: 2, k: 0, alpha: 1, a: a.c, lda: 0, b: b.c, ldb: 2, beta: 0, c: c.p, ldc: 3)
    XCTAssertEqual(c.array, [0, 0, 3, 0, 0, 6])
    XCTAssertFalse(CPUKernels.blasCoreName.isEmpty)
  }

  func testGemmBatchedWithStrides() {
    var rng = TestRandom(2)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      // The second size is cut into 2 pieces per matrix.
      for ((transA, transB), (m, n, k, batch)) in [(false, false), (true, false), (false, true), (true, true)]
        .flatMap({ t in [(7, 5, 13, 3), (300, 40, 200, 2)].map { (t, $0) } })
      {
        let lda = (transA ? m : k) + 1, ldb = (transB ? k : n) + 2, ldc = n + 3
        let strideA = (transA ? k : m) * lda + 11
        let strideB = (transB ? n : k) * ldb + 5
        let strideC = m * ldc + 7
        let a = Buf(rng.uniform(strideA * batch)), b = Buf(rng.uniform(strideB * batch))
        let c0 = rng.uniform(strideC * batch)
        let c1 = Buf(c0), c2 = Buf(c0)
        cpu.gemmBatched(
          transA: transA, transB: transB, m: m, n: n, k: k, alpha: -0.5, a: a.c, lda: lda,
          strideA: strideA, b: b.c, ldb: ldb, strideB: strideB, beta: 0.25, c: c1.p, ldc: ldc,
          strideC: strideC, batch: batch)
        ref.gemmBatched(
          transA: transA, transB: transB, m: m, n: n, k: k, alpha: -0.5, a: a.c, lda: lda,
          strideA: strideA, b: b.c, ldb: ldb, strideB: strideB, beta: 0.25, c: c2.p, ldc: ldc,
          strideC: strideC, batch: batch)
        // Everything outside the matrices (padding, gaps between them) is untouched by both.
        assertClose(
          c1.array, c2.array, tol: 1e-5 * Float(max(k, 8)).squareRoot() / 3,
          "gemmBatched t\(threads) \(m)x\(n)x\(k) b\(batch) \(transA) \(transB)")
      }
    }
  }

  // MARK: Bias

  func testAddBiasAndBiasGradient() {
    var rng = TestRandom(3)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for (rows, cols) in [(1, 1), (7, 13), (33, 31), (100, 384), (5, 17), (300, 200)] {
        let y0 = rng.normal(rows * cols), bias = Buf(rng.normal(cols))
        let y1 = Buf(y0), y2 = Buf(y0)
        cpu.addBias(y1.p, bias: bias.c, rows: rows, cols: cols)
        ref.addBias(y2.p, bias: bias.c, rows: rows, cols: cols)
        assertBitwise(y1.array, y2.array, "addBias t\(threads) \(rows)x\(cols)")

        // setBias: y = bias on every row, or x + bias; garbage in y beforehand must not show.
        let x = Buf(rng.normal(rows * cols))
        for plus in [nil, x.c] {
          let s1 = Buf(rng.normal(rows * cols)), s2 = Buf(rng.normal(rows * cols))
          cpu.setBias(s1.p, bias: bias.c, plus: plus, rows: rows, cols: cols)
          ref.setBias(s2.p, bias: bias.c, plus: plus, rows: rows, cols: cols)
          let label = "setBias\(plus == nil ? "" : " plus x") t\(threads) \(rows)x\(cols)"
          assertBitwise(s1.array, s2.array, label)
          // By hand, for one element.
          let (r, c) = (rows - 1, cols / 2)
          XCTAssertEqual(s1.array[r * cols + c], (plus == nil ? 0 : x.array[r * cols + c]) + bias.array[c], label)
        }

        let dy = Buf(rng.normal(rows * cols))
        let d0 = rng.normal(cols)
        let d1 = Buf(d0), d2 = Buf(d0)
        cpu.accumulateBiasGradient(dy.c, rows: rows, cols: cols, into: d1.p)
        ref.accumulateBiasGradient(dy.c, rows: rows, cols: cols, into: d2.p)
        // A sum of `rows` N(0,1) terms: sqrt(rows)-sized, rows <= 300.
        assertClose(
          d1.array, d2.array, tol: 2e-6 * Float(rows).squareRoot(), "biasGradient t\(threads) \(rows)x\(cols)")
      }
    }
  }

  // MARK: Activations

  func activationInputs(_ rng: inout TestRandom, count: Int) -> [Float] {
    let specials: [Float] = [0, -0.0, 10, -10, 30, -30, 1e-3, -1e-3, 5, -5, 2.5, -2.5, 100, -100]
    return Array((specials + rng.normal(count, std: 3)).prefix(count))
  }

  func testGeluForwardBackward() {
    var rng = TestRandom(4)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for count in [1, 7, 14, 31, 1000, 100_003] {
        let x = Buf(activationInputs(&rng, count: count))
        let y1 = Buf(count: count, value: .nan), y2 = Buf(count: count)
        cpu.geluForward(x.c, y1.p, count: count)
        ref.geluForward(x.c, y2.p, count: count)
        // A handful of roundings on values of size |x|: a few ulp.
        assertClose(y1.array, y2.array, tol: 1e-6, "gelu t\(threads) n\(count)")

        let dy = Buf(rng.normal(count))
        let d1 = Buf(count: count, value: .nan), d2 = Buf(count: count)
        cpu.geluBackward(x.c, dy.c, d1.p, count: count)
        ref.geluBackward(x.c, dy.c, d2.p, count: count)
        assertClose(d1.array, d2.array, tol: 2e-6, "geluBackward t\(threads) n\(count)")
      }
    }
    // Known values at the extremes and at 0.
    let cpu = CPUKernels()
    let x = Buf([0, 10, -10, 30, -30])
    let y = Buf(count: 5)
    cpu.geluForward(x.c, y.p, count: 5)
    XCTAssertEqual(y.array[0], 0)
    XCTAssertEqual(y.array[1], 10)
    XCTAssertEqual(y.array[3], 30)
    XCTAssertEqual(y.array[2], 0, accuracy: 1e-20)
    XCTAssertEqual(y.array[4], 0, accuracy: 1e-20)
    let ones = Buf(count: 5, value: 1), dx = Buf(count: 5)
    cpu.geluBackward(x.c, ones.c, dx.p, count: 5)
    XCTAssertEqual(dx.array[0], 0.5)
    XCTAssertEqual(dx.array[1], 1)
    XCTAssertEqual(dx.array[3], 1)
    XCTAssertEqual(dx.array[2], 0, accuracy: 1e-20)
    XCTAssertEqual(dx.array[4], 0, accuracy: 1e-20)
    XCTAssertTrue(dx.array.allSatisfy { $0.isFinite } && y.array.allSatisfy { $0.isFinite })
  }

  /// The one-pass GELU of the backward: GELU and its gradient against `reference`, the very bits of
  /// `cpu`'s two separate kernels, with the gradient in place over dy as the GPT block runs it, and
  /// the protocol's default (two kernels) on `reference` with its own bits.
  func testGeluForwardBackwardInOnePass() {
    var rng = TestRandom(41)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for count in [1, 15, 17, 1000, 100_003] {
        let x = Buf(activationInputs(&rng, count: count))
        let dy = Buf(rng.normal(count))
        // The same gradient in place: dx is dy's buffer.
        let y = Buf(count: count, value: .nan), dxInPlace = Buf(dy.array)
        cpu.geluForwardBackward(x.c, dxInPlace.c, y: y.p, dx: dxInPlace.p, count: count)
        let ySeparate = Buf(count: count, value: .nan), dxSeparate = Buf(count: count, value: .nan)
        cpu.geluForward(x.c, ySeparate.p, count: count)
        cpu.geluBackward(x.c, dy.c, dxSeparate.p, count: count)
        XCTAssertEqual(y.array.map(\.bitPattern), ySeparate.array.map(\.bitPattern), "gelu t\(threads) n\(count)")
        XCTAssertEqual(
          dxInPlace.array.map(\.bitPattern), dxSeparate.array.map(\.bitPattern), "gelu grad t\(threads) n\(count)")
        let yRef = Buf(count: count), dxRef = Buf(count: count, value: .nan)
        ref.geluForwardBackward(x.c, dy.c, y: yRef.p, dx: dxRef.p, count: count)
        assertClose(y.array, yRef.array, tol: 1e-6, "gelu vs reference t\(threads) n\(count)")
        assertClose(dxInPlace.array, dxRef.array, tol: 2e-6, "gelu grad vs reference t\(threads) n\(count)")
        let yRef2 = Buf(count: count), dxRef2 = Buf(count: count)
        ref.geluForward(x.c, yRef2.p, count: count)
        ref.geluBackward(x.c, dy.c, dxRef2.p, count: count)
        XCTAssertEqual(yRef.array.map(\.bitPattern), yRef2.array.map(\.bitPattern))
        XCTAssertEqual(dxRef.array.map(\.bitPattern), dxRef2.array.map(\.bitPattern))
      }
    }
  }

  func testReluForwardBackward() {
    var rng = TestRandom(5)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for count in [1, 7, 17, 1000, 70_001] {
        var values = activationInputs(&rng, count: count)
        if count > 3 { values[1] = 0; values[2] = -0.0; values[3] = .nan }
        let x = Buf(values)
        let y1 = Buf(count: count, value: .nan), y2 = Buf(count: count)
        cpu.reluForward(x.c, y1.p, count: count)
        ref.reluForward(x.c, y2.p, count: count)
        assertBitwise(y1.array, y2.array, "relu t\(threads) n\(count)")
        let dy = Buf(rng.normal(count))
        let d1 = Buf(count: count, value: .nan), d2 = Buf(count: count)
        cpu.reluBackward(x.c, dy.c, d1.p, count: count)
        ref.reluBackward(x.c, dy.c, d2.p, count: count)
        assertBitwise(d1.array, d2.array, "reluBackward t\(threads) n\(count)")
      }
    }
    // At exactly 0 the output and the gradient are 0.
    let cpu = CPUKernels()
    let x = Buf([0, -0.0]), y = Buf(count: 2, value: 7), dx = Buf(count: 2, value: 7)
    cpu.reluForward(x.c, y.p, count: 2)
    cpu.reluBackward(x.c, Buf([3, 4]).c, dx.p, count: 2)
    XCTAssertEqual(y.array, [0, 0])
    XCTAssertEqual(dx.array, [0, 0])
  }

  // MARK: LayerNorm

  func testLayerNormForwardBackward() {
    var rng = TestRandom(6)
    let shapes = [(1, 1), (1, 7), (13, 31), (8, 384), (5, 100), (3, 1), (200, 13), (256, 384), (1001, 100)]
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for (rows, cols) in shapes {
        let what = "layerNorm t\(threads) \(rows)x\(cols)"
        let x = Buf(rng.normal(rows * cols, mean: 3, std: 2))
        let gamma = Buf(rng.normal(cols, mean: 1, std: 0.5)), beta = Buf(rng.normal(cols))
        let y1 = Buf(count: rows * cols, value: .nan), y2 = Buf(count: rows * cols)
        let m1 = Buf(count: rows), m2 = Buf(count: rows), s1 = Buf(count: rows), s2 = Buf(count: rows)
        cpu.layerNormForward(
          x.c, gamma: gamma.c, beta: beta.c, y1.p, mean: m1.p, rstd: s1.p, rows: rows, cols: cols,
          eps: 1e-5)
        ref.layerNormForward(
          x.c, gamma: gamma.c, beta: beta.c, y2.p, mean: m2.p, rstd: s2.p, rows: rows, cols: cols,
          eps: 1e-5)
        // Row sums of <= 384 Float terms of size ~3: a few 1e-6 relative.
        assertClose(m1.array, m2.array, tol: 1e-5, "\(what) mean")
        assertClose(s1.array, s2.array, tol: 1e-5, "\(what) rstd")
        assertClose(y1.array, y2.array, tol: 1e-5, "\(what) y")

        // Backward from the reference's saved statistics; dx, dgamma, dbeta all accumulate.
        let dy = Buf(rng.normal(rows * cols))
        let dx0 = rng.normal(rows * cols), dg0 = rng.normal(cols), db0 = rng.normal(cols)
        let dx1 = Buf(dx0), dx2 = Buf(dx0), dg1 = Buf(dg0), dg2 = Buf(dg0), db1 = Buf(db0), db2 = Buf(db0)
        cpu.layerNormBackward(
          dy.c, x.c, gamma: gamma.c, mean: m2.c, rstd: s2.c, dx: dx1.p, dgamma: dg1.p, dbeta: db1.p,
          rows: rows, cols: cols)
        ref.layerNormBackward(
          dy.c, x.c, gamma: gamma.c, mean: m2.c, rstd: s2.c, dx: dx2.p, dgamma: dg2.p, dbeta: db2.p,
          rows: rows, cols: cols)
        assertClose(dx1.array, dx2.array, tol: 1e-5, "\(what) dx")
        let colTol = 2e-6 * Float(rows).squareRoot()
        assertClose(dg1.array, dg2.array, tol: colTol, "\(what) dgamma")
        assertClose(db1.array, db2.array, tol: colTol, "\(what) dbeta")

        // dx accumulates: from zeros, then added to the prior contents, it gives the same.
        let dxz = Buf(count: rows * cols), dgz = Buf(count: cols), dbz = Buf(count: cols)
        cpu.layerNormBackward(
          dy.c, x.c, gamma: gamma.c, mean: m2.c, rstd: s2.c, dx: dxz.p, dgamma: dgz.p, dbeta: dbz.p,
          rows: rows, cols: cols)
        assertClose(dx1.array, zip(dx0, dxz.array).map { $0 + $1 }, tol: 1e-6, "\(what) dx accumulates")
        assertClose(db1.array, zip(db0, dbz.array).map { $0 + $1 }, tol: 1e-6, "\(what) dbeta accumulates")
      }
    }
  }

  // MARK: Attention

  /// (batch, seq, channels, heads): T = 1, heads = 1, C not a multiple of 8, sequences across the
  /// 64-row causal blocks, more heads than rows, one head with several blocks (fewer tasks than
  /// threads), many heads.
  static let attentionShapes = [
    (1, 1, 8, 1), (2, 7, 12, 3), (1, 13, 31, 1), (2, 31, 20, 4), (1, 65, 16, 2), (2, 130, 24, 3),
    (1, 128, 64, 2), (3, 1, 6, 2), (2, 3, 40, 8), (1, 200, 16, 1), (3, 70, 36, 12),
  ]

  func testAttentionForwardAgainstReference() {
    var rng = TestRandom(7)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for (B, T, C, H) in Self.attentionShapes {
        let what = "attention t\(threads) B\(B) T\(T) C\(C) H\(H)"
        let qkv = Buf(rng.normal(B * T * 3 * C))
        let out1 = Buf(count: B * T * C, value: .nan), out2 = Buf(count: B * T * C)
        let p1 = Buf(count: B * H * T * T, value: .nan), p2 = Buf(count: B * H * T * T)
        cpu.attentionForward(qkv: qkv.c, out: out1.p, probs: p1.p, batch: B, seq: T, channels: C, heads: H)
        ref.attentionForward(qkv: qkv.c, out: out2.p, probs: p2.p, batch: B, seq: T, channels: C, heads: H)
        // Probabilities are in [0, 1]; out is a convex combination of values of size ~1.
        assertClose(p1.array, p2.array, tol: 2e-6, "\(what) probs")
        assertClose(out1.array, out2.array, tol: 1e-5, "\(what) out")
        let probs = p1.array
        for row in 0..<(B * H * T) {
          let t = row % T
          var sum = 0.0
          for u in 0..<T {
            let v = probs[row * T + u]
            if u > t {
              XCTAssertEqual(v.bitPattern, 0, "\(what): probs above the diagonal must be +0")
            } else {
              sum += Double(v)
            }
          }
          XCTAssertEqual(sum, 1, accuracy: 1e-5, "\(what): row \(row) sums to \(sum)")
        }
      }
    }
  }

  func testAttentionBackwardAgainstReference() {
    var rng = TestRandom(8)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for (B, T, C, H) in Self.attentionShapes {
        let what = "attentionBackward t\(threads) B\(B) T\(T) C\(C) H\(H)"
        let qkv = Buf(rng.normal(B * T * 3 * C))
        let out = Buf(count: B * T * C), probs = Buf(count: B * H * T * T)
        ref.attentionForward(qkv: qkv.c, out: out.p, probs: probs.p, batch: B, seq: T, channels: C, heads: H)
        let dout = Buf(rng.normal(B * T * C))
        // dqkv is overwritten and scratch holds garbage: NaN in both must not leak.
        let d1 = Buf(count: B * T * 3 * C, value: .nan), d2 = Buf(count: B * T * 3 * C)
        let scratch = Buf(count: B * H * T * T, value: .nan), scratch2 = Buf(count: B * H * T * T)
        cpu.attentionBackward(
          dout: dout.c, qkv: qkv.c, probs: probs.c, dqkv: d1.p, scratch: scratch.p,
          batch: B, seq: T, channels: C, heads: H)
        ref.attentionBackward(
          dout: dout.c, qkv: qkv.c, probs: probs.c, dqkv: d2.p, scratch: scratch2.p,
          batch: B, seq: T, channels: C, heads: H)
        // Sums over <= T = 130 terms of size ~1 (times 1/sqrt(hs)).
        assertClose(d1.array, d2.array, tol: 2e-5, what)
      }
    }
  }

  // MARK: Embeddings

  func testEmbeddingsWithRepeatedTokens() {
    var rng = TestRandom(9)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for (B, T, C, vocab) in [(2, 7, 13, 3), (3, 5, 48, 11), (1, 1, 1, 2), (4, 64, 384, 5), (1, 9, 17, 1)] {
        let what = "embedding t\(threads) B\(B) T\(T) C\(C) V\(vocab)"
        let tokens = rng.ints(B * T, below: vocab)
        let wte = Buf(rng.normal(vocab * C)), wpe = Buf(rng.normal(T * C))
        let o1 = Buf(count: B * T * C, value: .nan), o2 = Buf(count: B * T * C)
        tokens.withUnsafeBufferPointer { tok in
          cpu.embeddingForward(
            tokens: tok.baseAddress!, wte: wte.c, wpe: wpe.c, out: o1.p, batch: B, seq: T, channels: C)
          ref.embeddingForward(
            tokens: tok.baseAddress!, wte: wte.c, wpe: wpe.c, out: o2.p, batch: B, seq: T, channels: C)
        }
        assertBitwise(o1.array, o2.array, "\(what) forward")

        let dout = Buf(rng.normal(B * T * C))
        let dte0 = rng.normal(vocab * C), dpe0 = rng.normal(T * C)
        let dte1 = Buf(dte0), dte2 = Buf(dte0), dpe1 = Buf(dpe0), dpe2 = Buf(dpe0)
        tokens.withUnsafeBufferPointer { tok in
          cpu.embeddingBackward(
            dout: dout.c, tokens: tok.baseAddress!, dwte: dte1.p, dwpe: dpe1.p, batch: B, seq: T, channels: C)
          ref.embeddingBackward(
            dout: dout.c, tokens: tok.baseAddress!, dwte: dte2.p, dwpe: dpe2.p, batch: B, seq: T, channels: C)
        }
        // Rows are added in order i = 0, 1, ... in both: the same Float sums, bit for bit.
        assertBitwise(dte1.array, dte2.array, "\(what) dwte")
        assertBitwise(dpe1.array, dpe2.array, "\(what) dwpe")
      }
    }
  }

  // MARK: Cross-entropy

  func testSoftmaxCrossEntropy() {
    var rng = TestRandom(10)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for (rows, classes) in [(1, 1), (7, 13), (5, 1000), (3, 50_257), (64, 97), (40, 2000)] {
        let what = "crossEntropy t\(threads) \(rows)x\(classes)"
        var values = rng.normal(rows * classes, std: 3)
        let targets = rng.ints(rows, below: classes)
        if rows >= 3 && classes >= 3 {
          // An extreme row (a 1e4 spread), and a row whose maximum appears twice.
          values[0] = 1e4
          values[1] = -1e4
          values[classes + 2] = 50
          values[classes + 1] = 50
        }
        let logits = Buf(values)
        let scale = 1 / Float(rows)
        let d1 = Buf(count: rows * classes, value: .nan), d2 = Buf(count: rows * classes)
        let (r1, r2, r3) = targets.withUnsafeBufferPointer { t in
          (
            cpu.softmaxCrossEntropy(
              logits: logits.c, targets: t.baseAddress!, rows: rows, classes: classes, dlogits: d1.p,
              gradScale: scale),
            ref.softmaxCrossEntropy(
              logits: logits.c, targets: t.baseAddress!, rows: rows, classes: classes, dlogits: d2.p,
              gradScale: scale),
            cpu.softmaxCrossEntropy(
              logits: logits.c, targets: t.baseAddress!, rows: rows, classes: classes, dlogits: nil,
              gradScale: scale)
          )
        }
        XCTAssertTrue(r1.loss.isFinite, what)
        // Per row: log of a Float-lane sum (relative error ~1e-6) against Double.
        XCTAssertEqual(r1.loss, r2.loss, accuracy: 1e-5 * (Double(rows) + abs(r2.loss)), what)
        XCTAssertEqual(r1.correct, r2.correct, what)
        XCTAssertEqual(r3.loss, r1.loss, "\(what): the loss does not depend on dlogits")
        XCTAssertEqual(r3.correct, r1.correct, what)
        XCTAssertTrue(d1.array.allSatisfy { $0.isFinite }, what)
        // dlogits are probabilities (minus one at the target) times the scale.
        assertClose(d1.array, d2.array, tol: 1e-6 * scale, "\(what) dlogits")
      }
    }
  }

  func testCrossEntropyFirstMaximumAndExtremes() {
    let cpu = CPUKernels()
    // Row 0: a tie at 1 and 3, target 1 (the first maximum): correct.
    // Row 1: the same tie, target 3: not correct.
    // Row 2: a 2e4 spread, target at the bottom: loss 2e4, a finite gradient.
    let logits = Buf([0, 5, 1, 5, 0, 0, 5, 1, 5, 0, 1e4, 0, -1e4, 3, 2])
    let targets: [Int32] = [1, 3, 2]
    let d = Buf(count: 15)
    let r = targets.withUnsafeBufferPointer {
      cpu.softmaxCrossEntropy(
        logits: logits.c, targets: $0.baseAddress!, rows: 3, classes: 5, dlogits: d.p, gradScale: 1)
    }
    XCTAssertEqual(r.correct, 1)
    XCTAssertTrue(r.loss.isFinite)
    XCTAssertEqual(r.loss, 2 * log(2 + exp(-4.0) + 2 * exp(-5.0)) + 2e4, accuracy: 1e-3)
    XCTAssertTrue(d.array.allSatisfy { $0.isFinite })
    XCTAssertEqual(d.array[10], 1, accuracy: 1e-6)
    XCTAssertEqual(d.array[12], -1, accuracy: 1e-6)
  }

  // MARK: Elementwise and reductions

  func testElementwiseAndReductions() {
    var rng = TestRandom(11)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for count in [1, 7, 16, 31, 1000, 131_075, 1_000_003] {
        let what = "t\(threads) n\(count)"
        let a0 = rng.normal(count), b0 = rng.normal(count)
        let a = Buf(a0), b = Buf(b0)
        let o1 = Buf(count: count, value: .nan), o2 = Buf(count: count)
        cpu.add(a.c, b.c, o1.p, count: count)
        ref.add(a.c, b.c, o2.p, count: count)
        assertBitwise(o1.array, o2.array, "add \(what)")
        // out aliasing a, then b.
        let al = Buf(a0)
        cpu.add(al.c, b.c, al.p, count: count)
        assertBitwise(al.array, o2.array, "add aliasing a \(what)")
        let bl = Buf(b0)
        cpu.add(a.c, bl.c, bl.p, count: count)
        assertBitwise(bl.array, o2.array, "add aliasing b \(what)")

        let y1 = Buf(b0), y2 = Buf(b0)
        cpu.accumulate(a.c, into: y1.p, count: count)
        ref.accumulate(a.c, into: y2.p, count: count)
        assertBitwise(y1.array, y2.array, "accumulate \(what)")

        let c1 = Buf(count: count, value: .nan)
        cpu.copy(a.c, c1.p, count: count)
        assertBitwise(c1.array, a0, "copy \(what)")

        let f1 = Buf(b0)
        cpu.fill(f1.p, value: -2.5, count: count)
        XCTAssertTrue(f1.array.allSatisfy { $0 == -2.5 }, "fill \(what)")

        let s1 = Buf(a0), s2 = Buf(a0)
        cpu.scale(s1.p, by: 0.3, count: count)
        ref.scale(s2.p, by: 0.3, count: count)
        assertBitwise(s1.array, s2.array, "scale \(what)")

        let q1 = cpu.sumOfSquares(a.c, count: count), q2 = ref.sumOfSquares(a.c, count: count)
        // Float lanes over blocks of 1024 (64 terms per lane): relative error well below 1e-5.
        XCTAssertEqual(q1, q2, accuracy: 1e-5 * q2, "sumOfSquares \(what)")
      }
      // Edge: nothing to do.
      XCTAssertEqual(cpu.sumOfSquares(Buf(count: 1).c, count: 0), 0)
    }
  }

  // MARK: Optimizers

  func testSGDMomentumSemantics() {
    var rng = TestRandom(12)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for count in [1, 7, 33, 100_001] {
        let what = "sgd t\(threads) n\(count)"
        let p0 = rng.normal(count)
        let p1 = Buf(p0), p2 = Buf(p0)
        // The buffer's prior contents are ignored at step 1.
        let garbage = rng.normal(count)
        let m1 = Buf(garbage), m2 = Buf(garbage)
        for step in 1...2 {
          let g = Buf(rng.normal(count))
          cpu.sgdStep(
            param: p1.p, grad: g.c, momentumBuffer: m1.p, count: count, lr: 0.1, momentum: 0.9,
            weightDecay: 0.01, step: step)
          ref.sgdStep(
            param: p2.p, grad: g.c, momentumBuffer: m2.p, count: count, lr: 0.1, momentum: 0.9,
            weightDecay: 0.01, step: step)
          if step == 1 {
            for i in 0..<count {
              XCTAssertEqual(m1.p[i], g.p[i] + 0.01 * p0[i], "\(what): buf = g at step 1")
            }
          }
          // The same Float operations as the reference: the same bits.
          assertBitwise(m1.array, m2.array, "\(what) buffer step \(step)")
          assertBitwise(p1.array, p2.array, "\(what) param step \(step)")
        }
      }
    }
  }

  func testAdamW() {
    var rng = TestRandom(13)
    for threads in testThreads {
      let cpu = CPUKernels(threads: threads)
      for count in [1, 7, 33, 100_001] {
        let what = "adamw t\(threads) n\(count)"
        let p0 = rng.normal(count)
        let p1 = Buf(p0), p2 = Buf(p0)
        let m1 = Buf(count: count), m2 = Buf(count: count), v1 = Buf(count: count), v2 = Buf(count: count)
        for step in 1...3 {
          let g = Buf(rng.normal(count, std: 0.1))
          cpu.adamwStep(
            param: p1.p, grad: g.c, m: m1.p, v: v1.p, count: count, lr: 1e-2, beta1: 0.9,
            beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step: step)
          ref.adamwStep(
            param: p2.p, grad: g.c, m: m2.p, v: v2.p, count: count, lr: 1e-2, beta1: 0.9,
            beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step: step)
          // Float against Double: a few ulp of each quantity.
          assertClose(m1.array, m2.array, tol: 1e-6, "\(what) m step \(step)")
          assertClose(v1.array, v2.array, tol: 1e-6, "\(what) v step \(step)")
          assertClose(p1.array, p2.array, tol: 1e-6, "\(what) param step \(step)")
        }
      }
    }
  }
}
