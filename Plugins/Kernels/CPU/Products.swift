import CBLAS

/// Matrix products: every one is cut into pieces by a rule of the shapes alone (never of `threads`),
/// each piece one single-threaded `cblas_sgemm` call on the pool. So every element of C is computed
/// by the same OpenBLAS call whatever the number of threads, and the bits do not depend on it.
extension CPUKernels {
  /// How a product C(m, n) is cut: into `count` pieces of `size` rows of C (`alongRows`) or
  /// columns, the last one shorter.
  struct ProductSplit: Equatable {
    var alongRows: Bool
    var size: Int
    var count: Int
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

  /// The pieces of C(m, n) = op(A)(m, k) op(B)(k, n): along the longer side of C (so the operand
  /// packed again by every piece is the smaller one), at least `minimumPieceSize` wide (a multiple
  /// of 16) and `productGrain` multiply-adds each. Never a function of `threads`: OpenBLAS picks
  /// among kernels (small-matrix, direct, blocked) by a call's sizes, so the cut decides the bits.
  static func productSplit(m: Int, n: Int, k: Int) -> ProductSplit {
    let alongRows = m >= n
    let side = alongRows ? m : n
    // Multiply-adds per row (column) of C.
    let across = (alongRows ? n : m) * Swift.max(k, 1)
    if side * across < 2 * productGrain { return ProductSplit(alongRows: alongRows, size: side, count: 1) }
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
    pool.run(tasks: split.count) { i in
      sgemmPiece(i, of: split, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    }
  }

  public func gemmBatched(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
    a: UnsafePointer<Float>, lda: Int, strideA: Int,
    b: UnsafePointer<Float>, ldb: Int, strideB: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int, batch: Int
  ) {
    // Every piece of every matrix is a task of one pool call.
    let split = Self.productSplit(m: m, n: n, k: k)
    pool.run(tasks: batch * split.count) { t in
      let (i, piece) = t.quotientAndRemainder(dividingBy: split.count)
      sgemmPiece(
        piece, of: split, transA, transB, m, n, k, alpha, a + i * strideA, lda, b + i * strideB, ldb, beta,
        c + i * strideC, ldc)
    }
  }
}
