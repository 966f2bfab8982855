/// Causal multi-head attention, as tasks on the pool: one task per (row block, batch, head), so the
/// small per-head products of every head run at once, each a single-threaded OpenBLAS call.
///
/// A task computes its block of query rows completely (scores, softmax, output), so the bits of
/// every row depend only on the shapes, never on `threads` or on which thread ran the task. Tasks
/// are numbered with the last row blocks (the longest, causally) first, so that the short ones fill
/// the gaps at the end.
extension CPUKernels {
  /// Row blocks for the causal products: a block of query rows [r0, r1) only needs keys 0..<r1.
  static let attentionBlock = 64

  /// The attention tasks of (B, T, heads): task t covers rows r0..<r1 of head h of batch row b.
  @inline(__always)
  static func attentionTask(
    _ t: Int, batch: Int, seq T: Int, heads: Int
  ) -> (b: Int, h: Int, r0: Int, r1: Int) {
    let blocks = (T + attentionBlock - 1) / attentionBlock
    let (j, bh) = t.quotientAndRemainder(dividingBy: batch * heads)
    let r0 = (blocks - 1 - j) * attentionBlock
    return (bh / heads, bh % heads, r0, Swift.min(T, r0 + attentionBlock))
  }

  @inline(__always)
  static func attentionTaskCount(batch: Int, seq T: Int, heads: Int) -> Int {
    batch * heads * ((T + attentionBlock - 1) / attentionBlock)
  }

  public func attentionForward(
    qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
    probs: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int, heads: Int
  ) {
    let T = seq, C = channels
    precondition(heads > 0 && C % heads == 0, "channels must be a multiple of heads")
    let hs = C / heads
    let scale = 1 / Float(hs).squareRoot()
    pool.run(tasks: Self.attentionTaskCount(batch: batch, seq: T, heads: heads)) { t in
      let (b, h, r0, r1) = Self.attentionTask(t, batch: batch, seq: T, heads: heads)
      let q = qkv + b * T * 3 * C + h * hs, k = q + C, v = q + 2 * C
      let p = probs + (b * heads + h) * T * T
      // S = scale * Q K^T for rows r0..<r1, keys 0..<r1 (the rest is zeroed by the softmax).
      sgemm(false, true, r1 - r0, r1, hs, scale, q + r0 * 3 * C, 3 * C, k, 3 * C, 0, p + r0 * T, T)
      // Causal softmax of each row in place; zeros above the diagonal.
      for row in r0..<r1 { softmaxRowInPlace(p + row * T, count: row + 1, width: T) }
      // out_h = P V_h.
      sgemm(false, false, r1 - r0, hs, r1, 1, p + r0 * T, T, v, 3 * C, 0, out + b * T * C + h * hs + r0 * C, C)
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

  /// ds[0..<count] = p (ds - sum(p ds)) * scale over the row's first `count` entries (the softmax's
  /// backward, in place over dP); ds[count..<width] = 0.
  @inline(__always)
  private func softmaxBackwardRowInPlace(
    _ pr: UnsafePointer<Float>, _ ds: UnsafeMutablePointer<Float>, count n: Int, width T: Int, scale: Float
  ) {
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

  public func attentionBackward(
    dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>, probs: UnsafePointer<Float>,
    dqkv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
    batch: Int, seq: Int, channels: Int, heads: Int
  ) {
    let T = seq, C = channels
    precondition(heads > 0 && C % heads == 0, "channels must be a multiple of heads")
    let hs = C / heads
    let scale = 1 / Float(hs).squareRoot()
    let tasks = Self.attentionTaskCount(batch: batch, seq: T, heads: heads)
    // Per row block: dP = dO V^T into scratch, then dS = P (dP - rowsum(P dP)) * scale in place
    // (zeros above the diagonal); dV rows r0..<r1 = P[r0..<T, r0..<r1]^T dO[r0..<T].
    pool.run(tasks: tasks) { t in
      let (b, h, r0, r1) = Self.attentionTask(t, batch: batch, seq: T, heads: heads)
      let dO = dout + b * T * C + h * hs
      let v = qkv + b * T * 3 * C + 2 * C + h * hs
      let dv = dqkv + b * T * 3 * C + 2 * C + h * hs
      let p = probs + (b * heads + h) * T * T
      let ds = scratch + (b * heads + h) * T * T
      sgemm(false, true, r1 - r0, r1, hs, 1, dO + r0 * C, C, v, 3 * C, 0, ds + r0 * T, T)
      for row in r0..<r1 {
        softmaxBackwardRowInPlace(p + row * T, ds + row * T, count: row + 1, width: T, scale: scale)
      }
      sgemm(true, false, r1 - r0, hs, T - r0, 1, p + r0 * T + r0, T, dO + r0 * C, C, 0, dv + r0 * 3 * C, 3 * C)
    }
    // Per row block, once every dS row is there: dQ rows r0..<r1 = dS K;
    // dK rows r0..<r1 = dS[r0..<T, r0..<r1]^T Q[r0..<T].
    pool.run(tasks: tasks) { t in
      let (b, h, r0, r1) = Self.attentionTask(t, batch: batch, seq: T, heads: heads)
      let q = qkv + b * T * 3 * C + h * hs
      let dq = dqkv + b * T * 3 * C + h * hs
      let ds = UnsafePointer(scratch + (b * heads + h) * T * T)
      sgemm(false, false, r1 - r0, hs, r1, 1, ds + r0 * T, T, q + C, 3 * C, 0, dq + r0 * 3 * C, 3 * C)
      sgemm(
        true, false, r1 - r0, hs, T - r0, 1, ds + r0 * T + r0, T, q + r0 * 3 * C, 3 * C, 0,
        dq + C + r0 * 3 * C, 3 * C)
    }
  }
}
