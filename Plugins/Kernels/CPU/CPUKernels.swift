import CBLAS
import Dispatch
import Foundation
import HydraPluginAPI

/// The `cpu` kernels: every matrix product through OpenBLAS's `cblas_sgemm`, everything else as
/// vectorised Swift (16-lane SIMD), split over `threads` with `DispatchQueue.concurrentPerform`.
///
/// Determinism: work is split into chunks that depend only on the sizes and `threads`; every output
/// element and every reduction is computed by one chunk in a fixed order, and reductions over chunks
/// are combined in chunk order. The column reductions (bias, LayerNorm and embedding gradients) and
/// the scalar reductions (`sumOfSquares`, the cross-entropy loss) do not even depend on `threads`.
/// OpenBLAS products give the same bits for the same shapes, pool size and OpenBLAS kernel set
/// (`blasCoreName`); measured here they are also equal at 1 and 2 threads, but that is OpenBLAS's
/// business, not promised.
///
/// No heap allocation per call in this code (scratch for reductions is a 16-entry stack buffer);
/// libdispatch and OpenBLAS's thread pool may allocate internally when `threads` > 1.
///
/// An instance holds no mutable state: several devices (threads) may each use their own instance,
/// or share one, concurrently. OpenBLAS has one thread pool per process, and `init` sets its size
/// to `threads` for the whole process.
public final class CPUKernels: Kernels {
  public let name = "cpu"
  public let threads: Int
  public let memory: DeviceMemory

  public init(threads: Int = 1, memory: DeviceMemory = DeviceMemory()) {
    precondition(threads >= 1, "threads must be at least 1")
    self.threads = threads
    self.memory = memory
    openblas_set_num_threads(Int32(threads))
  }

  /// The OpenBLAS kernel set chosen for this CPU at load time (`OPENBLAS_CORETYPE` overrides it).
  /// On CPUs newer than the OpenBLAS release it can fall back to a slow generic one ("Prescott"):
  /// worth logging, and pinning the same value on every rank, since another kernel set gives other
  /// bits.
  public static var blasCoreName: String {
    guard let name = openblas_get_corename() else { return "unknown" }
    return String(cString: name)
  }

  // MARK: Work splitting

  /// Elementwise work below this many floats per thread runs on the calling thread.
  static let elementGrain = 1 << 15

  /// Runs `body` over `threads` contiguous pieces of 0..<count (piece boundaries multiples of
  /// `align`), or over the whole range at once when the work is small. Only for work whose result
  /// does not depend on the split (each output written by one piece).
  @inline(__always)
  private func parallelFor(
    _ count: Int, grain: Int, align: Int = 16, _ body: (Range<Int>) -> Void
  ) {
    let pieces = Swift.min(threads, Swift.max(1, count / Swift.max(grain, 1)))
    if pieces <= 1 {
      if count > 0 { body(0..<count) }
      return
    }
    let per = ((count + pieces - 1) / pieces + align - 1) / align * align
    DispatchQueue.concurrentPerform(iterations: pieces) { i in
      let lo = Swift.min(i * per, count)
      let hi = Swift.min(lo + per, count)
      if lo < hi { body(lo..<hi) }
    }
  }

  /// The fixed split used by scalar reductions: at most 16 chunks of 0..<count, boundaries multiples
  /// of `align`, independent of `threads`. `body(chunk, range)` is called once per chunk (chunks are
  /// spread over the threads); the caller combines per-chunk results in chunk order.
  @inline(__always)
  private func reductionChunks(
    _ count: Int, align: Int, grain: Int, _ body: (Int, Range<Int>) -> Void
  ) -> Int {
    let per = Swift.max(align, ((count + 15) / 16 + align - 1) / align * align)
    let chunks = (count + per - 1) / per
    let workers = Swift.min(threads, chunks, Swift.max(1, count / Swift.max(grain, 1)))
    if workers <= 1 {
      for j in 0..<chunks { body(j, j * per..<Swift.min(count, (j + 1) * per)) }
    } else {
      DispatchQueue.concurrentPerform(iterations: workers) { w in
        for j in (w * chunks / workers)..<((w + 1) * chunks / workers) {
          body(j, j * per..<Swift.min(count, (j + 1) * per))
        }
      }
    }
    return chunks
  }

  // MARK: Matrix products

  @inline(__always)
  private func sgemm(
    _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
    _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
    _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
  ) {
    if m == 0 || n == 0 { return }
    if k == 0 {
      // C = beta C (OpenBLAS would reject a leading dimension of 0 for the empty operand).
      for i in 0..<m {
        let row = c + i * ldc
        if beta == 0 { row.update(repeating: 0, count: n) } else { for j in 0..<n { row[j] *= beta } }
      }
      return
    }
    cblas_sgemm(
      CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
      Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
  }

  public func gemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
    a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
  ) {
    sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
  }

  public func gemmBatched(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
    a: UnsafePointer<Float>, lda: Int, strideA: Int,
    b: UnsafePointer<Float>, ldb: Int, strideB: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int, batch: Int
  ) {
    for i in 0..<batch {
      sgemm(
        transA, transB, m, n, k, alpha, a + i * strideA, lda, b + i * strideB, ldb,
        beta, c + i * strideC, ldc)
    }
  }

  // MARK: Bias

  public func addBias(
    _ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, rows: Int, cols: Int
  ) {
    parallelFor(rows, grain: Swift.max(1, Self.elementGrain / Swift.max(cols, 1)), align: 1) { rr in
      for r in rr {
        let row = y + r * cols
        var c = 0
        while c + 16 <= cols {
          store16(load16(row + c) + load16(bias + c), row + c)
          c += 16
        }
        while c < cols {
          row[c] += bias[c]
          c += 1
        }
      }
    }
  }

  /// Column block widths of the column reductions: each column is summed over the rows in row
  /// order, in blocks of `rowBlock` rows whose partial sums are added to a running total (error
  /// grows like rowBlock + rows / rowBlock rather than rows).
  static let rowBlock = 32

  /// For each column c: out[c] += sum over rows r of f(r, c), with f given 16 columns at a time.
  /// Split over threads by columns, so the result does not depend on `threads`.
  @inline(__always)
  private func columnSums(
    rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>,
    _ f: (_ r: Int, _ c: Int) -> V16, _ fScalar: (_ r: Int, _ c: Int) -> Float
  ) {
    let grain = Swift.max(16, Self.elementGrain / Swift.max(rows, 1))
    parallelFor(cols, grain: grain, align: 16) { cr in
      var c = cr.lowerBound
      while c + 16 <= cr.upperBound {
        var total = V16()
        var r = 0
        while r < rows {
          let end = Swift.min(rows, r + Self.rowBlock)
          var acc = V16()
          while r < end {
            acc += f(r, c)
            r += 1
          }
          total += acc
        }
        store16(load16(out + c) + total, out + c)
        c += 16
      }
      while c < cr.upperBound {
        var total: Float = 0
        var r = 0
        while r < rows {
          let end = Swift.min(rows, r + Self.rowBlock)
          var acc: Float = 0
          while r < end {
            acc += fScalar(r, c)
            r += 1
          }
          total += acc
        }
        out[c] += total
        c += 1
      }
    }
  }

  public func accumulateBiasGradient(
    _ dy: UnsafePointer<Float>, rows: Int, cols: Int, into dbias: UnsafeMutablePointer<Float>
  ) {
    columnSums(
      rows: rows, cols: cols, into: dbias, { r, c in load16(dy + r * cols + c) },
      { r, c in dy[r * cols + c] })
  }

  // MARK: Activations

  @inline(__always)
  private func map(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int,
    _ f: (V16) -> V16
  ) {
    parallelFor(count, grain: Self.elementGrain) { range in
      var i = range.lowerBound
      let end = range.upperBound
      while i + 16 <= end {
        store16(f(load16(x + i)), y + i)
        i += 16
      }
      if i < end { storePartial(f(loadPartial(x + i, end - i, fill: 0)), y + i, end - i) }
    }
  }

  @inline(__always)
  private func map2(
    _ x: UnsafePointer<Float>, _ z: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
    count: Int, _ f: (V16, V16) -> V16
  ) {
    parallelFor(count, grain: Self.elementGrain) { range in
      var i = range.lowerBound
      let end = range.upperBound
      while i + 16 <= end {
        store16(f(load16(x + i), load16(z + i)), y + i)
        i += 16
      }
      if i < end {
        let n = end - i
        storePartial(f(loadPartial(x + i, n, fill: 0), loadPartial(z + i, n, fill: 0)), y + i, n)
      }
    }
  }

  public func geluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    map(x, y, count: count) { CPUMath.gelu($0) }
  }

  public func geluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int
  ) {
    map2(x, dy, dx, count: count) { x, dy in CPUMath.geluGrad(x) * dy }
  }

  public func reluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    // `!(x > 0)` rather than `x <= 0`: NaN maps to 0, as in `x > 0 ? x : 0`.
    map(x, y, count: count) { x in x.replacing(with: 0, where: .!(x .> 0)) }
  }

  public func reluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int
  ) {
    map2(x, dy, dx, count: count) { x, dy in dy.replacing(with: 0, where: .!(x .> 0)) }
  }

  // MARK: LayerNorm

  public func layerNormForward(
    _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
    _ y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>,
    rstd: UnsafeMutablePointer<Float>, rows: Int, cols: Int, eps: Float
  ) {
    let grain = Swift.max(1, Self.elementGrain / Swift.max(cols, 1))
    let invCols = 1 / Float(cols)
    parallelFor(rows, grain: grain, align: 1) { rr in
      for r in rr {
        let xr = x + r * cols
        let yr = y + r * cols
        // Mean, then the variance about it (two passes: no cancellation).
        var acc = V16()
        var c = 0
        while c + 16 <= cols {
          acc += load16(xr + c)
          c += 16
        }
        var tail: Float = 0
        while c < cols {
          tail += xr[c]
          c += 1
        }
        let mu = (hsum(acc) + tail) * invCols
        var acc2 = V16()
        c = 0
        while c + 16 <= cols {
          let d = load16(xr + c) - mu
          acc2 += d * d
          c += 16
        }
        var tail2: Float = 0
        while c < cols {
          let d = xr[c] - mu
          tail2 += d * d
          c += 1
        }
        let variance = (hsum(acc2) + tail2) * invCols
        let s = 1 / (variance + eps).squareRoot()
        c = 0
        while c + 16 <= cols {
          store16((load16(xr + c) - mu) * s * load16(gamma + c) + load16(beta + c), yr + c)
          c += 16
        }
        while c < cols {
          yr[c] = (xr[c] - mu) * s * gamma[c] + beta[c]
          c += 1
        }
        mean[r] = mu
        rstd[r] = s
      }
    }
  }

  public func layerNormBackward(
    _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
    dx: UnsafeMutablePointer<Float>, dgamma: UnsafeMutablePointer<Float>,
    dbeta: UnsafeMutablePointer<Float>, rows: Int, cols: Int
  ) {
    // dx (rows split over threads): with xhat = (x - mean) rstd and g = dy gamma,
    // dx += rstd (g - mean(g) - xhat mean(g xhat)).
    let grain = Swift.max(1, Self.elementGrain / Swift.max(cols, 1))
    let invCols = 1 / Float(cols)
    parallelFor(rows, grain: grain, align: 1) { rr in
      for r in rr {
        let xr = x + r * cols, dyr = dy + r * cols, dxr = dx + r * cols
        let mu = mean[r], s = rstd[r]
        var accG = V16(), accGX = V16()
        var c = 0
        while c + 16 <= cols {
          let g = load16(dyr + c) * load16(gamma + c)
          let xhat = (load16(xr + c) - mu) * s
          accG += g
          accGX += g * xhat
          c += 16
        }
        var tailG: Float = 0, tailGX: Float = 0
        while c < cols {
          let g = dyr[c] * gamma[c]
          tailG += g
          tailGX += g * ((xr[c] - mu) * s)
          c += 1
        }
        let meanG = (hsum(accG) + tailG) * invCols
        let meanGX = (hsum(accGX) + tailGX) * invCols
        c = 0
        while c + 16 <= cols {
          let g = load16(dyr + c) * load16(gamma + c)
          let xhat = (load16(xr + c) - mu) * s
          store16(load16(dxr + c) + s * (g - meanG - xhat * meanGX), dxr + c)
          c += 16
        }
        while c < cols {
          let g = dyr[c] * gamma[c]
          let xhat = (xr[c] - mu) * s
          dxr[c] += s * (g - meanG - xhat * meanGX)
          c += 1
        }
      }
    }
    // dgamma += sum_r dy xhat, dbeta += sum_r dy (columns split over threads).
    columnSums(
      rows: rows, cols: cols, into: dgamma,
      { r, c in load16(dy + r * cols + c) * ((load16(x + r * cols + c) - mean[r]) * rstd[r]) },
      { r, c in dy[r * cols + c] * ((x[r * cols + c] - mean[r]) * rstd[r]) })
    columnSums(
      rows: rows, cols: cols, into: dbeta, { r, c in load16(dy + r * cols + c) },
      { r, c in dy[r * cols + c] })
  }

  // MARK: Attention

  /// Row blocks for the causal products: a block of query rows [r0, r1) only needs keys 0..<r1.
  static let attentionBlock = 64

  public func attentionForward(
    qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
    probs: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int, heads: Int
  ) {
    let T = seq, C = channels
    precondition(heads > 0 && C % heads == 0, "channels must be a multiple of heads")
    let hs = C / heads
    let scale = 1 / Float(hs).squareRoot()
    let blk = Self.attentionBlock
    // S = scale * Q K^T, lower block-triangle only (the rest is overwritten by the softmax).
    for b in 0..<batch {
      for h in 0..<heads {
        let q = qkv + b * T * 3 * C + h * hs
        let p = probs + (b * heads + h) * T * T
        var r0 = 0
        while r0 < T {
          let r1 = Swift.min(T, r0 + blk)
          sgemm(false, true, r1 - r0, r1, hs, scale, q + r0 * 3 * C, 3 * C, q + C, 3 * C, 0, p + r0 * T, T)
          r0 = r1
        }
      }
    }
    // Causal softmax of every row in place; zeros above the diagonal.
    let rowsTotal = batch * heads * T
    parallelFor(rowsTotal, grain: Swift.max(1, Self.elementGrain / Swift.max(T, 1)), align: 1) { rr in
      for row in rr {
        let t = row % T
        softmaxRowInPlace(probs + row * T, count: t + 1, width: T)
      }
    }
    // out_h = P V_h.
    for b in 0..<batch {
      for h in 0..<heads {
        let v = qkv + b * T * 3 * C + 2 * C + h * hs
        let p = probs + (b * heads + h) * T * T
        let o = out + b * T * C + h * hs
        var r0 = 0
        while r0 < T {
          let r1 = Swift.min(T, r0 + blk)
          sgemm(false, false, r1 - r0, hs, r1, 1, p + r0 * T, T, v, 3 * C, 0, o + r0 * C, C)
          r0 = r1
        }
      }
    }
  }

  /// row[0..<count] = softmax(row[0..<count]); row[count..<width] = 0. The row's tail is handled
  /// with a full-width masked load when the row is wide enough (the lanes past `count` are
  /// overwritten with zeros at the end).
  @inline(__always)
  private func softmaxRowInPlace(_ row: UnsafeMutablePointer<Float>, count n: Int, width: Int) {
    let main = n & ~15
    let full = main + 16 <= width
    var m = V16(repeating: -.infinity)
    var c = 0
    while c < main {
      m = vmax(m, load16(row + c))
      c += 16
    }
    if main < n { m = vmax(m, loadTail(row + main, n - main, fill: -.infinity, full: full)) }
    let top = hmax(m)
    var acc = V16()
    c = 0
    while c < main {
      let e = CPUMath.exp(load16(row + c) - top)
      store16(e, row + c)
      acc += e
      c += 16
    }
    if main < n {
      let e = CPUMath.exp(loadTail(row + main, n - main, fill: -.infinity, full: full) - top)
      if full { store16(e, row + main) } else { storePartial(e, row + main, n - main) }
      acc += e
    }
    let inv = 1 / hsum(acc)
    let end = full ? main + 16 : main
    c = 0
    while c < end {
      store16(load16(row + c) * inv, row + c)
      c += 16
    }
    while c < n {
      row[c] *= inv
      c += 1
    }
    if n < width { (row + n).update(repeating: 0, count: width - n) }
  }

  public func attentionBackward(
    dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>, probs: UnsafePointer<Float>,
    dqkv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
    batch: Int, seq: Int, channels: Int, heads: Int
  ) {
    let T = seq, C = channels
    precondition(heads > 0 && C % heads == 0, "channels must be a multiple of heads")
    let hs = C / heads
    let scale = 1 / Float(hs).squareRoot()
    let blk = Self.attentionBlock
    // dP = dO V^T (lower block-triangle) into scratch; dV = P^T dO.
    for b in 0..<batch {
      for h in 0..<heads {
        let dO = dout + b * T * C + h * hs
        let v = qkv + b * T * 3 * C + 2 * C + h * hs
        let dv = dqkv + b * T * 3 * C + 2 * C + h * hs
        let p = probs + (b * heads + h) * T * T
        let dp = scratch + (b * heads + h) * T * T
        var r0 = 0
        while r0 < T {
          let r1 = Swift.min(T, r0 + blk)
          sgemm(false, true, r1 - r0, r1, hs, 1, dO + r0 * C, C, v, 3 * C, 0, dp + r0 * T, T)
          // dV[u] for u in [r0, r1) = sum over t >= r0 of P[t, u] dO[t].
          sgemm(
            true, false, r1 - r0, hs, T - r0, 1, p + r0 * T + r0, T, dO + r0 * C, C, 0,
            dv + r0 * 3 * C, 3 * C)
          r0 = r1
        }
      }
    }
    // dS = P (dP - rowsum(P dP)) * scale, in place in scratch; zeros above the diagonal.
    let rowsTotal = batch * heads * T
    parallelFor(rowsTotal, grain: Swift.max(1, Self.elementGrain / Swift.max(T, 1)), align: 1) { rr in
      for row in rr {
        let n = row % T + 1
        let pr = probs + row * T
        let ds = scratch + row * T
        let main = n & ~15
        let full = main + 16 <= T
        var acc = V16()
        var c = 0
        while c < main {
          acc += load16(pr + c) * load16(ds + c)
          c += 16
        }
        if main < n {
          acc += loadTail(pr + main, n - main, fill: 0, full: full) * loadTail(ds + main, n - main, fill: 0, full: full)
        }
        let inner = hsum(acc)
        c = 0
        while c < main {
          store16(load16(pr + c) * (load16(ds + c) - inner) * scale, ds + c)
          c += 16
        }
        while c < n {
          ds[c] = pr[c] * (ds[c] - inner) * scale
          c += 1
        }
        if n < T { (ds + n).update(repeating: 0, count: T - n) }
      }
    }
    // dQ = dS K; dK = dS^T Q.
    for b in 0..<batch {
      for h in 0..<heads {
        let q = qkv + b * T * 3 * C + h * hs
        let dq = dqkv + b * T * 3 * C + h * hs
        let ds = UnsafePointer(scratch + (b * heads + h) * T * T)
        var r0 = 0
        while r0 < T {
          let r1 = Swift.min(T, r0 + blk)
          sgemm(false, false, r1 - r0, hs, r1, 1, ds + r0 * T, T, q + C, 3 * C, 0, dq + r0 * 3 * C, 3 * C)
          sgemm(
            true, false, r1 - r0, hs, T - r0, 1, ds + r0 * T + r0, T, q + r0 * 3 * C, 3 * C, 0,
            dq + C + r0 * 3 * C, 3 * C)
          r0 = r1
        }
      }
    }
  }

  // MARK: Embeddings

  public func embeddingForward(
    tokens: UnsafePointer<Int32>, wte: UnsafePointer<Float>, wpe: UnsafePointer<Float>,
    out: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int
  ) {
    let C = channels
    parallelFor(batch * seq, grain: Swift.max(1, Self.elementGrain / Swift.max(C, 1)), align: 1) { rr in
      for i in rr {
        let te = wte + Int(tokens[i]) * C, pe = wpe + (i % seq) * C, o = out + i * C
        var c = 0
        while c + 16 <= C {
          store16(load16(te + c) + load16(pe + c), o + c)
          c += 16
        }
        while c < C {
          o[c] = te[c] + pe[c]
          c += 1
        }
      }
    }
  }

  public func embeddingBackward(
    dout: UnsafePointer<Float>, tokens: UnsafePointer<Int32>,
    dwte: UnsafeMutablePointer<Float>, dwpe: UnsafeMutablePointer<Float>,
    batch: Int, seq: Int, channels: Int
  ) {
    // Split by columns: every element still receives its rows in order i = 0, 1, ...
    let C = channels, rows = batch * seq
    parallelFor(C, grain: Swift.max(16, Self.elementGrain / Swift.max(rows, 1)), align: 16) { cr in
      for i in 0..<rows {
        let d = dout + i * C, te = dwte + Int(tokens[i]) * C, pe = dwpe + (i % seq) * C
        var c = cr.lowerBound
        while c + 16 <= cr.upperBound {
          let g = load16(d + c)
          store16(load16(te + c) + g, te + c)
          store16(load16(pe + c) + g, pe + c)
          c += 16
        }
        while c < cr.upperBound {
          te[c] += d[c]
          pe[c] += d[c]
          c += 1
        }
      }
    }
  }

  // MARK: Loss

  public func softmaxCrossEntropy(
    logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows: Int, classes: Int,
    dlogits: UnsafeMutablePointer<Float>?, gradScale: Float
  ) -> (loss: Double, correct: Int) {
    let V = classes
    return withUnsafeTemporaryAllocation(of: Double.self, capacity: 16) { losses in
      withUnsafeTemporaryAllocation(of: Int.self, capacity: 16) { hits in
        let chunks = reductionChunks(
          rows, align: 1, grain: Swift.max(1, Self.elementGrain / Swift.max(V, 1))
        ) { chunk, rr in
          var loss = 0.0
          var correct = 0
          for r in rr {
            let row = logits + r * V
            let target = Int(targets[r])
            let (l, best) = crossEntropyRow(
              row, classes: V, target: target, dlogits: dlogits.map { $0 + r * V }, gradScale: gradScale)
            loss += l
            if best == target { correct += 1 }
          }
          losses[chunk] = loss
          hits[chunk] = correct
        }
        var loss = 0.0
        var correct = 0
        for j in 0..<chunks {
          loss += losses[j]
          correct += hits[j]
        }
        return (loss, correct)
      }
    }
  }

  /// One row: (loss, index of the first maximum); writes the row of dlogits if given.
  @inline(__always)
  private func crossEntropyRow(
    _ row: UnsafePointer<Float>, classes V: Int, target: Int,
    dlogits d: UnsafeMutablePointer<Float>?, gradScale: Float
  ) -> (Double, Int) {
    var m = V16(repeating: -.infinity)
    var c = 0
    while c + 16 <= V {
      m = vmax(m, load16(row + c))
      c += 16
    }
    if c < V { m = vmax(m, loadPartial(row + c, V - c, fill: -.infinity)) }
    let top = hmax(m)
    // First maximum: find the first 16-block holding it, then the lane.
    var best = 0
    c = 0
    while c + 16 <= V {
      if anyLane(load16(row + c) .== top) { break }
      c += 16
    }
    while c < V {
      if row[c] == top { break }
      c += 1
    }
    best = c < V ? c : 0
    // Read before the loop below, which may write the gradient over the logits (in place).
    let targetLogit = Double(row[target])
    // Sum of exp(x - top): Float lanes over blocks of 1024 classes, blocks added in Double.
    var total = 0.0
    c = 0
    while c < V {
      let end = Swift.min(V, c + 1024)
      var acc = V16()
      while c + 16 <= end {
        let e = CPUMath.exp(load16(row + c) - top)
        if let d { store16(e, d + c) }
        acc += e
        c += 16
      }
      if c < end {
        let e = CPUMath.exp(loadPartial(row + c, end - c, fill: -.infinity) - top)
        if let d { storePartial(e, d + c, end - c) }
        acc += e
        c = end
      }
      total += Double(hsum(acc))
    }
    let loss = log(total) - (targetLogit - Double(top))
    if let d {
      let f = Float(Double(gradScale) / total)
      c = 0
      while c + 16 <= V {
        store16(load16(d + c) * f, d + c)
        c += 16
      }
      while c < V {
        d[c] *= f
        c += 1
      }
      d[target] -= gradScale
    }
    return (loss, best)
  }

  // MARK: Elementwise and reductions

  public func add(
    _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
    count: Int
  ) {
    map2(a, b, out, count: count) { $0 + $1 }
  }

  public func accumulate(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    map2(x, UnsafePointer(y), y, count: count) { $0 + $1 }
  }

  public func copy(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    parallelFor(count, grain: Self.elementGrain * 4) { r in
      (dst + r.lowerBound).update(from: src + r.lowerBound, count: r.count)
    }
  }

  public func fill(_ x: UnsafeMutablePointer<Float>, value: Float, count: Int) {
    parallelFor(count, grain: Self.elementGrain * 4) { r in
      (x + r.lowerBound).update(repeating: value, count: r.count)
    }
  }

  public func scale(_ x: UnsafeMutablePointer<Float>, by factor: Float, count: Int) {
    map(UnsafePointer(x), x, count: count) { $0 * factor }
  }

  public func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
    withUnsafeTemporaryAllocation(of: Double.self, capacity: 16) { partial in
      let chunks = reductionChunks(count, align: 16, grain: Self.elementGrain) { chunk, range in
        // Squares in Float lanes over blocks of 1024 elements, blocks added in Double.
        var total = 0.0
        var i = range.lowerBound
        while i < range.upperBound {
          let end = Swift.min(range.upperBound, i + 1024)
          var acc = V16()
          while i + 16 <= end {
            let v = load16(x + i)
            acc += v * v
            i += 16
          }
          if i < end {
            let v = loadPartial(x + i, end - i, fill: 0)
            acc += v * v
            i = end
          }
          total += Double(hsum(acc))
        }
        partial[chunk] = total
      }
      var sum = 0.0
      for j in 0..<chunks { sum += partial[j] }
      return sum
    }
  }

  // MARK: Optimizer updates

  public func sgdStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>,
    momentumBuffer: UnsafeMutablePointer<Float>, count: Int,
    lr: Float, momentum: Float, weightDecay: Float, step: Int
  ) {
    let first = step == 1
    parallelFor(count, grain: Self.elementGrain) { range in
      var i = range.lowerBound
      let end = range.upperBound
      while i + 16 <= end {
        let p = load16(param + i)
        let g = load16(grad + i) + weightDecay * p
        let buf = first ? g : momentum * load16(momentumBuffer + i) + g
        store16(buf, momentumBuffer + i)
        store16(p - lr * buf, param + i)
        i += 16
      }
      while i < end {
        let g = grad[i] + weightDecay * param[i]
        let buf = first ? g : momentum * momentumBuffer[i] + g
        momentumBuffer[i] = buf
        param[i] -= lr * buf
        i += 1
      }
    }
  }

  public func adamwStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>,
    m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int,
    lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float, step: Int
  ) {
    let decay = Float(1 - Double(lr) * Double(weightDecay))
    let c1 = 1 - pow(Double(beta1), Double(step))
    let c2 = 1 - pow(Double(beta2), Double(step))
    let inv1 = Float(1 / c1), inv2 = Float(1 / c2)
    let a1 = 1 - beta1, a2 = 1 - beta2
    parallelFor(count, grain: Self.elementGrain) { range in
      var i = range.lowerBound
      let end = range.upperBound
      while i + 16 <= end {
        let g = load16(grad + i)
        let mi = beta1 * load16(m + i) + a1 * g
        let vi = beta2 * load16(v + i) + a2 * (g * g)
        store16(mi, m + i)
        store16(vi, v + i)
        let p = load16(param + i) * decay
        store16(p - lr * (mi * inv1) / ((vi * inv2).squareRoot() + eps), param + i)
        i += 16
      }
      while i < end {
        let g = grad[i]
        let mi = beta1 * m[i] + a1 * g
        let vi = beta2 * v[i] + a2 * (g * g)
        m[i] = mi
        v[i] = vi
        let p = param[i] * decay
        param[i] = p - lr * (mi * inv1) / ((vi * inv2).squareRoot() + eps)
        i += 1
      }
    }
  }
}
