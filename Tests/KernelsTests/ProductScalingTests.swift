import CBLAS
import Dispatch
import Foundation
import XCTest

@testable import HydraKernelsCPU

/// A measurement, not a test (opt-in: HYDRA_PRODUCT_SCALING=1, a release build): for each matrix
/// product of one GPT layer (B=8, T=128, C=384: forward, dX, dW of the four linear layers), the
/// cpu kernels' pieces at 1 and 2 threads against OpenBLAS's own call of the same shape at 1 and 2
/// threads (its pool, the same process). Prints GFLOP/s, the ratios and the median 2-thread ratio:
/// how much of the 2-thread loss is the piece split rather than the shapes.
final class ProductScalingTests: XCTestCase {
  func time(reps: Int = 15, _ body: () -> Void) -> Double {
    body()
    var ts: [Double] = []
    for _ in 0..<reps {
      let start = DispatchTime.now().uptimeNanoseconds
      body()
      ts.append(Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
    }
    return ts.sorted()[ts.count / 2]
  }

  func testProductScaling() throws {
    try XCTSkipUnless(
      ProcessInfo.processInfo.environment["HYDRA_PRODUCT_SCALING"] == "1",
      "set HYDRA_PRODUCT_SCALING=1 (and build with -c release) to measure the products' thread scaling")
    var ratios: [Double] = []
    var rng = TestRandom(7)
    // HYDRA_PRODUCT_SCALING_SHAPE="B,T,C" measures another layer (default 8,128,384).
    let shape = (ProcessInfo.processInfo.environment["HYDRA_PRODUCT_SCALING_SHAPE"] ?? "8,128,384")
      .split(separator: ",").compactMap { Int($0) }
    let (B, T, C) = shape.count == 3 ? (shape[0], shape[1], shape[2]) : (8, 128, 384)
    let R = B * T
    let big = Buf(rng.normal(R * 4 * C)), big2 = Buf(rng.normal(R * 4 * C)), out = Buf(count: R * 4 * C)
    // (name, transA, transB, m, n, k)
    var shapes: [(String, Bool, Bool, Int, Int, Int)] = []
    for (i, o) in [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] {
      shapes.append(("fwd \(i)x\(o)", false, false, R, o, i))
      shapes.append(("dX  \(i)x\(o)", false, true, R, i, o))
      shapes.append(("dW  \(i)x\(o)", true, false, i, o, R))
    }
    let k1 = CPUKernels(threads: 1), k2 = CPUKernels(threads: 2)
    for (name, ta, tb, m, n, kk) in shapes {
      let lda = ta ? m : kk, ldb = tb ? kk : n
      func ours(_ k: CPUKernels) -> Double {
        time {
          k.gemm(
            transA: ta, transB: tb, m: m, n: n, k: kk, alpha: 1, a: big.c, lda: lda, b: big2.c, ldb: ldb, beta: 0,
            c: out.p, ldc: n)
        }
      }
      func blas(_ t: Int32) -> Double {
        openblas_set_num_threads(t)
        defer { openblas_set_num_threads(1) }
        return time {
          cblas_sgemm(
            CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, Int32(m), Int32(n),
            Int32(kk), 1, big.c, Int32(lda), big2.c, Int32(ldb), 0, out.p, Int32(n))
        }
      }
      let o1 = ours(k1), o2 = ours(k2), b1 = blas(1), b2 = blas(2)
      ratios.append(b2 / o2)
      let split = CPUKernels.productSplit(m: m, n: n, k: kk)
      let f = 2 * Double(m * n * kk)
      print(
        String(
          format:
            "%@ m%5d n%5d k%5d pieces %2d x %4d %@ x %d of k | 1t ours %.1f blas %.1f (%.2f) | 2t ours %.1f blas %.1f (%.2f) | ours x%.2f blas x%.2f",
          name, m, n, kk, split.count, split.size, split.alongRows ? "rows" : "cols", split.kCount, f / o1 / 1e9,
          f / b1 / 1e9,
          b1 / o1, f / o2 / 1e9, f / b2 / 1e9, b2 / o2, o1 / o2, b1 / b2))
    }
    print(String(format: "median, 2 threads, ours / OpenBLAS's own: %.2f", ratios.sorted()[ratios.count / 2]))
  }
}
