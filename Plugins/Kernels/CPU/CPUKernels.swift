import CBLAS
import HydraPluginAPI

#if canImport(Glibc)
  import Glibc
#endif

/// The `cpu` kernels: every matrix product through OpenBLAS's `cblas_sgemm`, everything else as
/// vectorised Swift (16-lane SIMD), spread over `threads` threads of a persistent pool
/// (`WorkerPool`: the caller and `threads - 1` workers).
///
/// Determinism, and more: the results do not depend on `threads` at all. Work is cut into pieces by
/// rules of the sizes alone; every output element is computed by one piece, the same way whichever
/// thread runs it; reductions (`sumOfSquares`, the cross-entropy loss) use a fixed chunking and add
/// the chunks in order; column reductions (bias, LayerNorm and embedding gradients) sum each column
/// over its rows in order. Products are cut into pieces of C (`productSplit`; a weight gradient's
/// also along k, its partial products added in order) and attention into (row block, batch, head)
/// tasks, each piece one *single-threaded* OpenBLAS call: OpenBLAS's own
/// pool is set to one thread for the whole process, so it never competes with this one. The bits
/// of a product then depend only on the shapes and OpenBLAS's kernel set (`blasCoreName`).
///
/// No heap allocation per call (scratch for reductions is a small stack buffer; products cut along k
/// keep one scratch buffer per instance, allocated once; the pool borrows each call's closure).
///
/// An instance may be used by several threads at once (devices sharing it): a call that finds the
/// pool busy runs on its caller's thread alone, with the same results. Each instance owns its pool;
/// the workers stop when the instance goes.
public final class CPUKernels: Kernels {
  public let name = "cpu"
  public let threads: Int
  public let memory: DeviceMemory
  let pool: WorkerPool
  /// Scratch of the products cut along k (`withProductScratch`), guarded by `scratchLock`: at most
  /// `kScratchLimit` floats, allocated at the first such product and kept.
  var scratch: UnsafeMutablePointer<Float>?
  var scratchCapacity = 0
  let scratchLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

  public init(threads: Int = 1, memory: DeviceMemory = DeviceMemory()) {
    precondition(threads >= 1, "threads must be at least 1")
    self.threads = threads
    self.memory = memory
    pool = WorkerPool(threads: threads)
    pthread_mutex_init(scratchLock, nil)
    // Every product is cut into single-threaded calls on this pool; OpenBLAS threads of its own
    // would only compete with it for the cores.
    openblas_set_num_threads(1)
  }

  deinit {
    pool.shutdown()
    scratch?.deallocate()
    pthread_mutex_destroy(scratchLock)
    scratchLock.deallocate()
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

  /// Elementwise work below this many floats per piece runs on the calling thread.
  static let elementGrain = 1 << 15
  /// Pieces per thread for elementwise work: more pieces than threads even out threads slowed by
  /// other processes (pieces are taken by whichever thread is free).
  static let piecesPerThread = 4

  /// Runs `body` over contiguous pieces of 0..<count (boundaries multiples of `align`), on the
  /// pool, or over the whole range at once when the work is small. Only for work whose result does
  /// not depend on the split (each output written by one piece).
  @inline(__always)
  func parallelFor(
    _ count: Int, grain: Int, align: Int = 16, _ body: (Range<Int>) -> Void
  ) {
    let pieces = Swift.min(threads * Self.piecesPerThread, Swift.max(1, count / Swift.max(grain, 1)))
    if pieces <= 1 || threads == 1 {
      if count > 0 { body(0..<count) }
      return
    }
    let per = ((count + pieces - 1) / pieces + align - 1) / align * align
    pool.run(tasks: (count + per - 1) / per) { i in
      let lo = i * per
      body(lo..<Swift.min(lo + per, count))
    }
  }

  /// Chunks of the scalar reductions: at most this many, independent of `threads`.
  static let reductionChunkLimit = 64

  /// The fixed split used by scalar reductions: at most `reductionChunkLimit` chunks of 0..<count,
  /// boundaries multiples of `align`, independent of `threads`. `body(chunk, range)` is called once
  /// per chunk (on the pool); the caller combines per-chunk results in chunk order.
  @inline(__always)
  func reductionChunks(
    _ count: Int, align: Int, grain: Int, _ body: (Int, Range<Int>) -> Void
  ) -> Int {
    let limit = Self.reductionChunkLimit
    let per = Swift.max(align, ((count + limit - 1) / limit + align - 1) / align * align)
    let chunks = (count + per - 1) / per
    if threads == 1 || count / Swift.max(grain, 1) <= 1 {
      for j in 0..<chunks { body(j, j * per..<Swift.min(count, (j + 1) * per)) }
    } else {
      pool.run(tasks: chunks) { j in body(j, j * per..<Swift.min(count, (j + 1) * per)) }
    }
    return chunks
  }

  // MARK: Bias

  /// out = a + b over one row of `count` floats, on the calling thread (out may alias a).
  @inline(__always)
  static func addRow(
    _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int
  ) {
    var c = 0
    while c + 16 <= count {
      store16(load16(a + c) + load16(b + c), out + c)
      c += 16
    }
    while c < count {
      out[c] = a[c] + b[c]
      c += 1
    }
  }

  public func addBias(
    _ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, rows: Int, cols: Int
  ) {
    parallelFor(rows, grain: Swift.max(1, Self.elementGrain / Swift.max(cols, 1)), align: 1) { rr in
      for r in rr { Self.addRow(y + r * cols, bias, y + r * cols, count: cols) }
    }
  }

  public func setBias(
    _ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, plus x: UnsafePointer<Float>?, rows: Int,
    cols: Int
  ) {
    parallelFor(rows, grain: Swift.max(1, Self.elementGrain / Swift.max(cols, 1)), align: 1) { rr in
      for r in rr {
        if let x {
          Self.addRow(x + r * cols, bias, y + r * cols, count: cols)
        } else {
          (y + r * cols).update(from: bias, count: cols)
        }
      }
    }
  }

  /// Column block widths of the column reductions: each column is summed over the rows in row
  /// order, in blocks of `rowBlock` rows whose partial sums are added to a running total (error
  /// grows like rowBlock + rows / rowBlock rather than rows).
  static let rowBlock = 32

  /// For each column c: out[c] += sum over rows r of term(r, c), 16 columns at a time.
  /// Split over threads by columns, so the result does not depend on `threads`. Each piece runs
  /// `columnSumsRange`, compiled once per `Term` (see `map`).
  @inline(__always)
  private func columnSums<Term: ColumnTerm>(rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>, _ term: Term) {
    let grain = Swift.max(16, Self.elementGrain / Swift.max(rows, 1))
    parallelFor(cols, grain: grain, align: 16) { cr in Self.columnSumsRange(term, rows: rows, out, cr) }
  }

  @inline(never)
  static func columnSumsRange<Term: ColumnTerm>(
    _ term: Term, rows: Int, _ out: UnsafeMutablePointer<Float>, _ cr: Range<Int>
  ) {
    var c = cr.lowerBound
    while c + 16 <= cr.upperBound {
      var total = V16()
      var r = 0
      while r < rows {
        let end = Swift.min(rows, r + Self.rowBlock)
        var acc = V16()
        while r < end {
          acc += term.lanes(r, c)
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
          acc += term.scalar(r, c)
          r += 1
        }
        total += acc
      }
      out[c] += total
      c += 1
    }
  }

  public func accumulateBiasGradient(
    _ dy: UnsafePointer<Float>, rows: Int, cols: Int, into dbias: UnsafeMutablePointer<Float>
  ) {
    columnSums(rows: rows, cols: cols, into: dbias, RowMajor(p: dy, cols: cols))
  }

  // MARK: Activations

  /// y = f(x) over 0..<count, on the pool. Each piece runs `mapRange`, one compiled copy per `F`
  /// whichever the thread count: inlined into the one-thread path instead, the same loop ran at half
  /// the speed (registers spilled in the larger function).
  @inline(__always)
  private func map<F: LaneMap>(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, _ f: F) {
    parallelFor(count, grain: Self.elementGrain) { range in Self.mapRange(f, x, y, range) }
  }

  @inline(never)
  static func mapRange<F: LaneMap>(
    _ f: F, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ range: Range<Int>
  ) {
    var i = range.lowerBound
    let end = range.upperBound
    while i + 16 <= end {
      store16(f(load16(x + i)), y + i)
      i += 16
    }
    if i < end { storePartial(f(loadPartial(x + i, end - i, fill: 0)), y + i, end - i) }
  }

  /// y = f(x, z) over 0..<count, on the pool (as `map`).
  @inline(__always)
  private func map2<F: LaneMap2>(
    _ x: UnsafePointer<Float>, _ z: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, _ f: F
  ) {
    parallelFor(count, grain: Self.elementGrain) { range in Self.map2Range(f, x, z, y, range) }
  }

  @inline(never)
  static func map2Range<F: LaneMap2>(
    _ f: F, _ x: UnsafePointer<Float>, _ z: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
    _ range: Range<Int>
  ) {
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

  public func geluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    map(x, y, count: count, Gelu())
  }

  public func geluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int
  ) {
    map2(x, dy, dx, count: count, GeluGradient())
  }

  public func geluForwardBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
    dx: UnsafeMutablePointer<Float>, count: Int
  ) {
    parallelFor(count, grain: Self.elementGrain) { range in Self.geluForwardBackwardRange(x, dy, y, dx, range) }
  }

  /// `CPUMath.geluAndGrad` over one range: the bits of `geluForward` and `geluBackward`.
  @inline(never)
  static func geluForwardBackwardRange(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
    _ dx: UnsafeMutablePointer<Float>, _ range: Range<Int>
  ) {
    var i = range.lowerBound
    let end = range.upperBound
    while i + 16 <= end {
      let (g, d) = CPUMath.geluAndGrad(load16(x + i))
      let gy = load16(dy + i)
      store16(g, y + i)
      store16(d * gy, dx + i)
      i += 16
    }
    if i < end {
      let n = end - i
      let (g, d) = CPUMath.geluAndGrad(loadPartial(x + i, n, fill: 0))
      let gy = loadPartial(dy + i, n, fill: 0)
      storePartial(g, y + i, n)
      storePartial(d * gy, dx + i, n)
    }
  }

  public func reluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    map(x, y, count: count, Relu())
  }

  public func reluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int
  ) {
    map2(x, dy, dx, count: count, ReluGradient())
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
      rows: rows, cols: cols, into: dgamma, NormalizedTimesGradient(dy: dy, x: x, mean: mean, rstd: rstd, cols: cols))
    columnSums(rows: rows, cols: cols, into: dbeta, RowMajor(p: dy, cols: cols))
  }

  // MARK: Embeddings

  public func embeddingForward(
    tokens: UnsafePointer<Int32>, wte: UnsafePointer<Float>, wpe: UnsafePointer<Float>,
    out: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int
  ) {
    let C = channels
    parallelFor(batch * seq, grain: Swift.max(1, Self.elementGrain / Swift.max(C, 1)), align: 1) { rr in
      for i in rr { Self.addRow(wte + Int(tokens[i]) * C, wpe + (i % seq) * C, out + i * C, count: C) }
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
    return withUnsafeTemporaryAllocation(of: Double.self, capacity: Self.reductionChunkLimit) { losses in
      withUnsafeTemporaryAllocation(of: Int.self, capacity: Self.reductionChunkLimit) { hits in
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
    map2(a, b, out, count: count, Sum())
  }

  public func accumulate(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    map2(x, UnsafePointer(y), y, count: count, Sum())
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
    map(UnsafePointer(x), x, count: count, Scale(factor: factor))
  }

  public func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
    withUnsafeTemporaryAllocation(of: Double.self, capacity: Self.reductionChunkLimit) { partial in
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

// MARK: - Lane functions
//
// The elementwise loops take their function as a generic value, not a closure: a closure called
// from inside a pool task stays an indirect call per 16 lanes (its SIMD16 arguments passed through
// memory), which made GELU's forward pass as slow on 2 threads as on 1. A generic parameter is
// specialised, and the function inlined into the loop, on every path.

/// y = f(x), 16 lanes at a time.
protocol LaneMap {
  func callAsFunction(_ x: V16) -> V16
}

/// y = f(x, z), 16 lanes at a time.
protocol LaneMap2 {
  func callAsFunction(_ x: V16, _ z: V16) -> V16
}

/// The term of row r at column c of a column sum: 16 columns from c, or column c alone.
protocol ColumnTerm {
  func lanes(_ r: Int, _ c: Int) -> V16
  func scalar(_ r: Int, _ c: Int) -> Float
}

struct Gelu: LaneMap {
  @inline(__always) func callAsFunction(_ x: V16) -> V16 { CPUMath.gelu(x) }
}

struct GeluGradient: LaneMap2 {
  @inline(__always) func callAsFunction(_ x: V16, _ dy: V16) -> V16 { CPUMath.geluGrad(x) * dy }
}

/// `!(x > 0)` rather than `x <= 0`: NaN maps to 0, as in `x > 0 ? x : 0`.
struct Relu: LaneMap {
  @inline(__always) func callAsFunction(_ x: V16) -> V16 { x.replacing(with: 0, where: .!(x .> 0)) }
}

struct ReluGradient: LaneMap2 {
  @inline(__always) func callAsFunction(_ x: V16, _ dy: V16) -> V16 { dy.replacing(with: 0, where: .!(x .> 0)) }
}

struct Sum: LaneMap2 {
  @inline(__always) func callAsFunction(_ a: V16, _ b: V16) -> V16 { a + b }
}

struct Scale: LaneMap {
  let factor: Float
  @inline(__always) func callAsFunction(_ x: V16) -> V16 { x * factor }
}

/// p[r][c] of a row-major matrix with `cols` columns.
struct RowMajor: ColumnTerm {
  let p: UnsafePointer<Float>
  let cols: Int
  @inline(__always) func lanes(_ r: Int, _ c: Int) -> V16 { load16(p + r * cols + c) }
  @inline(__always) func scalar(_ r: Int, _ c: Int) -> Float { p[r * cols + c] }
}

/// LayerNorm's dgamma term: dy times the normalised input, (x - mean[r]) rstd[r].
struct NormalizedTimesGradient: ColumnTerm {
  let dy: UnsafePointer<Float>
  let x: UnsafePointer<Float>
  let mean: UnsafePointer<Float>
  let rstd: UnsafePointer<Float>
  let cols: Int
  @inline(__always) func lanes(_ r: Int, _ c: Int) -> V16 {
    load16(dy + r * cols + c) * ((load16(x + r * cols + c) - mean[r]) * rstd[r])
  }
  @inline(__always) func scalar(_ r: Int, _ c: Int) -> Float {
    dy[r * cols + c] * ((x[r * cols + c] - mean[r]) * rstd[r])
  }
}
