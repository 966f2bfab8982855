import CBLAS

#if canImport(Glibc)
  import Glibc
#endif

/// Matrix products: every one is cut into pieces by a rule of the shapes alone (never of `threads`),
/// each piece one single-threaded `cblas_sgemm` call on the pool. So every element of C is computed
/// by the same OpenBLAS call whatever the number of threads, and the bits do not depend on it.
extension CPUKernels {
  /// How a product C(m, n) = op(A)(m, k) op(B)(k, n) is cut: into `count` pieces of `size` rows of
  /// C (`alongRows`) or columns, the last one shorter; and, where `kCount > 1`, each of those into
  /// `kCount` pieces of the inner dimension, `kSize` wide (the last one shorter), whose products are
  /// added in order of k.
  struct ProductSplit: Equatable {
    var alongRows: Bool
    var size: Int
    var count: Int
    var kSize = 0
    var kCount = 1
  }

  /// Products below this many multiply-adds run as one piece (a pool call costs a few microseconds).
  static let productGrain = 1 << 20
  /// A piece has at least this many rows (columns) of C. Each piece packs the whole other operand
  /// again (OpenBLAS's threads share one packed copy; separate calls cannot): one packed element per
  /// 2 * 256 flops of the piece, a few per cent of a single thread's time, against 10-20 % at 64.
  static let minimumPieceSize = 256
  /// The most pieces a product is cut into: 16 threads get one each once C has 4096 rows (GPT-2
  /// small at batch 16, context 256).
  static let maximumPieces = 64
  /// A product whose inner dimension is its longest (a weight gradient: k = the batch's rows, m and n
  /// a layer's widths) is also cut along k, until there are this many pieces: C alone has too few
  /// pieces of `minimumPieceSize` for 16 threads (a d_model 128 layer's has one).
  static let targetPieces = 16
  /// A piece of k is at least this long: about OpenBLAS's own blocking of k, so that the extra pass
  /// over C that each piece costs is one that OpenBLAS's blocking makes anyway.
  static let minimumKPiece = 256
  /// The partial products of the pieces of k after the first go to scratch of at most this many
  /// floats (2 MiB, about what stays in a core's caches): fewer pieces of k for a larger C, and none
  /// for C of 2^19 floats or more. Each piece of k costs 4 passes over its part of the scratch (the
  /// product's zeroing, read and write, the sum's read), 1 per 64 multiply-adds at 256 wide: cheap
  /// in cache; from memory it made a d_model 768 layer's step 5-7 % slower on one thread.
  static let kScratchLimit = 1 << 19

  /// The pieces of C(m, n) = op(A)(m, k) op(B)(k, n): along the longer side of C (so the operand
  /// packed again by every piece is the smaller one), at least `minimumPieceSize` wide (a multiple
  /// of 16) and `productGrain` multiply-adds each. Never a function of `threads`: OpenBLAS picks
  /// among kernels (small-matrix, direct, blocked) by a call's sizes, so the cut decides the bits.
  ///
  /// Where k is the longest of the three (and at least 2 `minimumKPiece`), k is cut first: into at
  /// most `targetPieces` pieces of at least `minimumKPiece`, each with `productGrain` multiply-adds,
  /// within `kScratchLimit`. Then C is cut as above, but only into as many pieces as the pieces of k
  /// leave short of `targetPieces`.
  ///
  /// `alongK: false` keeps k whole (the batched products, whose matrices are the pieces).
  static func productSplit(m: Int, n: Int, k: Int, alongK: Bool = true) -> ProductSplit {
    let alongRows = m >= n
    let side = alongRows ? m : n
    let width = alongRows ? n : m
    // Multiply-adds per row (column) of C.
    let across = width * Swift.max(k, 1)
    if side * across < 2 * productGrain { return ProductSplit(alongRows: alongRows, size: side, count: 1) }
    if alongK && k >= m && k >= n && k >= 2 * minimumKPiece {
      let cells = m * n
      var kCount = Swift.min(
        targetPieces, k / minimumKPiece, 1 + kScratchLimit / cells, cells * k / productGrain)
      if kCount >= 2 {
        let kSize = roundUp16((k + kCount - 1) / kCount)
        kCount = (k + kSize - 1) / kSize
        // C: the pieces still wanted, each of at least `minimumPieceSize` and `productGrain`.
        let wanted = (targetPieces + kCount - 1) / kCount
        let perRow = width * kSize
        let size = roundUp16(
          Swift.max(minimumPieceSize, (productGrain + perRow - 1) / perRow, (side + wanted - 1) / wanted))
        let count = (side + size - 1) / size
        return ProductSplit(
          alongRows: alongRows, size: count == 1 ? side : size, count: count, kSize: kSize, kCount: kCount)
      }
    }
    let size = roundUp16(
      Swift.max(minimumPieceSize, (productGrain + across - 1) / across, (side + maximumPieces - 1) / maximumPieces))
    let count = (side + size - 1) / size
    return ProductSplit(alongRows: alongRows, size: count == 1 ? side : size, count: count)
  }

  @inline(__always)
  static func roundUp16(_ x: Int) -> Int { (x + 15) / 16 * 16 }

  /// One single-threaded OpenBLAS product (row-major), with OpenBLAS's rejection of k = 0 handled.
  @inline(__always)
  func sgemm(
    _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
    _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
    _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
  ) {
    if m == 0 || n == 0 { return }
    var beta = beta
    if beta == 0 {
      // OpenBLAS clears C for beta 0 in a pass of its own (`sgemm_beta`), slower than a memset
      // (4-25 % of the whole call at this project's shapes); beta 1 onto zeros gives the same bits:
      // OpenBLAS scales C by beta first, then adds alpha AB to it either way.
      if ldc == n {
        c.update(repeating: 0, count: m * n)
      } else {
        for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) }
      }
      beta = 1
    }
    if k == 0 {
      // C = beta C (OpenBLAS would reject a leading dimension of 0 for the empty operand).
      if beta != 1 { for i in 0..<m { for j in 0..<n { c[i * ldc + j] *= beta } } }
      return
    }
    cblas_sgemm(
      CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
      Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
  }

  /// Piece `i` of `split` of one product.
  @inline(__always)
  func sgemmPiece(
    _ i: Int, of split: ProductSplit,
    _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
    _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
    _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
  ) {
    let lo = i * split.size
    if split.alongRows {
      // Rows lo..<hi of C: rows of op(A), which are rows of A or, transposed, its columns.
      let hi = Swift.min(m, lo + split.size)
      sgemm(transA, transB, hi - lo, n, k, alpha, transA ? a + lo : a + lo * lda, lda, b, ldb, beta, c + lo * ldc, ldc)
    } else {
      // Columns lo..<hi of C: columns of op(B), which are columns of B or, transposed, its rows.
      let hi = Swift.min(n, lo + split.size)
      sgemm(transA, transB, m, hi - lo, k, alpha, a, lda, transB ? b + lo * ldb : b + lo, ldb, beta, c + lo, ldc)
    }
  }

  public func gemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
    a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
  ) {
    let split = Self.productSplit(m: m, n: n, k: k)
    if split.kCount == 1 {
      pool.run(tasks: split.count) { i in
        sgemmPiece(i, of: split, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
      }
      return
    }
    // Along k too: the first piece of k goes into C (with beta), each other one into its own
    // m x n of scratch (beta 0); then C adds the scratch in order of k. Every element of C is the
    // same sum of the same OpenBLAS calls at any number of threads.
    let cells = m * n
    withProductScratch(floats: (split.kCount - 1) * cells) { scratch in
      pool.run(tasks: split.kCount * split.count) { t in
        let (p, i) = t.quotientAndRemainder(dividingBy: split.count)
        let k0 = p * split.kSize
        let kk = Swift.min(k, k0 + split.kSize) - k0
        // Columns k0..< of op(A) and rows k0..< of op(B).
        let ap = transA ? a + k0 * lda : a + k0
        let bp = transB ? b + k0 : b + k0 * ldb
        if p == 0 {
          sgemmPiece(i, of: split, transA, transB, m, n, kk, alpha, ap, lda, bp, ldb, beta, c, ldc)
        } else {
          sgemmPiece(i, of: split, transA, transB, m, n, kk, alpha, ap, lda, bp, ldb, 0, scratch + (p - 1) * cells, n)
        }
      }
      let partials = split.kCount - 1
      parallelFor(m, grain: Swift.max(1, Self.elementGrain / Swift.max(n * partials, 1)), align: 1) { rows in
        for r in rows {
          for p in 0..<partials { Self.addRow(c + r * ldc, scratch + p * cells + r * n, c + r * ldc, count: n) }
        }
      }
    }
  }

  /// Runs `body` with `floats` floats of scratch (contents undefined): the instance's own (kept and
  /// grown, so that a training step allocates nothing), or, when another caller holds it, memory of
  /// this call's.
  func withProductScratch(floats: Int, _ body: (UnsafeMutablePointer<Float>) -> Void) {
    guard pthread_mutex_trylock(scratchLock) == 0 else {
      let own = UnsafeMutablePointer<Float>.allocate(capacity: floats)
      defer { own.deallocate() }
      return body(own)
    }
    defer { pthread_mutex_unlock(scratchLock) }
    if scratchCapacity < floats {
      scratch?.deallocate()
      scratch = UnsafeMutablePointer<Float>.allocate(capacity: floats)
      scratchCapacity = floats
    }
    body(scratch!)
  }

  public func gemmBatched(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
    a: UnsafePointer<Float>, lda: Int, strideA: Int,
    b: UnsafePointer<Float>, ldb: Int, strideB: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int, batch: Int
  ) {
    // Every piece of every matrix is a task of one pool call.
    let split = Self.productSplit(m: m, n: n, k: k, alongK: false)
    pool.run(tasks: batch * split.count) { t in
      let (i, piece) = t.quotientAndRemainder(dividingBy: split.count)
      sgemmPiece(
        piece, of: split, transA, transB, m, n, k, alpha, a + i * strideA, lda, b + i * strideB, ldb, beta,
        c + i * strideC, ldc)
    }
  }
}
