import Foundation
import HydraKernelsCPU
import XCTest

/// The vectorised exp and tanh of the cpu kernels against Foundation's (glibc's) over dense ranges.
final class FastMathTests: XCTestCase {
  /// Evaluates `f` on `xs` 16 at a time.
  func apply(_ xs: [Float], _ f: (SIMD16<Float>) -> SIMD16<Float>) -> [Float] {
    var out = [Float](repeating: 0, count: xs.count)
    var i = 0
    while i < xs.count {
      var v = SIMD16<Float>()
      let n = min(16, xs.count - i)
      for j in 0..<n { v[j] = xs[i + j] }
      let r = f(v)
      for j in 0..<n { out[i + j] = r[j] }
      i += 16
    }
    return out
  }

  func ulps(_ a: Float, _ b: Float) -> Int {
    func key(_ x: Float) -> Int {
      let bits = Int(x.bitPattern & 0x7FFF_FFFF)
      return x.sign == .minus ? -bits : bits
    }
    return abs(key(a) - key(b))
  }

  /// exp: <= 2 ulp wherever the result is a normal Float, within 1 subnormal step below that,
  /// on a grid of step 2^-10 over [-104, 88.75] plus the glibc-hard region near 0.
  func testFastExpMatchesFoundation() {
    var xs = [Float]()
    var x: Float = -104
    while x <= 88.75 {
      xs.append(x)
      x += 1.0 / 1024
    }
    for i in -2000...2000 { xs.append(Float(i) * 1e-6) }
    var rng = TestRandom(21)
    xs += rng.uniform(100_000, scale: 90)
    let got = apply(xs) { CPUMath.exp($0) }
    var worstUlp = 0, worstAt: Float = 0
    for (i, x) in xs.enumerated() {
      let want = Foundation.exp(x)
      if want >= Float.leastNormalMagnitude && want.isFinite {
        let u = ulps(got[i], want)
        if u > worstUlp { (worstUlp, worstAt) = (u, x) }
      } else if want < Float.leastNormalMagnitude {
        XCTAssertLessThanOrEqual(abs(got[i] - want), Float.leastNonzeroMagnitude, "exp(\(x))")
      } else {
        XCTAssertEqual(got[i], .infinity, "exp(\(x))")
      }
    }
    print("fast exp: max \(worstUlp) ulp (at \(worstAt)) over \(xs.count) points")
    XCTAssertLessThanOrEqual(worstUlp, 2, "worst at \(worstAt)")

    // Specials: exact 1 at 0; 0 for large negative and -inf; inf beyond the range; NaN stays NaN.
    let specials: [Float] = [0, -0.0, -104, -200, -1e30, -.infinity, 89, 1000, .infinity, .nan, -87.5, 88.72]
    let s = apply(specials) { CPUMath.exp($0) }
    XCTAssertEqual(s[0], 1)
    XCTAssertEqual(s[1], 1)
    XCTAssertEqual(Array(s[2...5]), [0, 0, 0, 0])
    XCTAssertEqual(Array(s[6...8]), [.infinity, .infinity, .infinity])
    XCTAssertTrue(s[9].isNaN)
    XCTAssertLessThanOrEqual(ulps(s[10], Foundation.exp(Float(-87.5))), 2)
    XCTAssertTrue(s[11].isFinite)
    XCTAssertLessThanOrEqual(ulps(s[11], Foundation.exp(Float(88.72))), 2)
  }

  /// tanh: absolute error < 1e-6 (measured ~1e-7) over [-20, 20] with step 2^-12, and exact +-1
  /// and finite far out.
  func testFastTanhMatchesFoundation() {
    var xs = [Float]()
    var x: Float = -20
    while x <= 20 {
      xs.append(x)
      x += 1.0 / 4096
    }
    xs += [1e-30, -1e-30, 100, -100, 1e30, -1e30, .infinity, -.infinity]
    let got = apply(xs) { CPUMath.tanh($0) }
    var worst: Float = 0, worstAt: Float = 0
    for (i, x) in xs.enumerated() {
      let err = abs(got[i] - Foundation.tanh(x))
      if !(err <= worst) { (worst, worstAt) = (err, x) }
    }
    print("fast tanh: max abs error \(worst) (at \(worstAt)) over \(xs.count) points")
    XCTAssertLessThan(worst, 1e-6, "worst at \(worstAt)")
    let s = apply([.infinity, -.infinity, 0, .nan]) { CPUMath.tanh($0) }
    XCTAssertEqual(Array(s[0...2]), [1, -1, 0])
    XCTAssertTrue(s[3].isNaN)
  }

  /// GELU and its derivative in the logistic form against the tanh form in Double.
  func testGeluFormsAgree() {
    var xs = [Float]()
    var x: Float = -40
    while x <= 40 {
      xs.append(x)
      x += 1.0 / 512
    }
    let y = apply(xs) { CPUMath.gelu($0) }
    let d = apply(xs) { CPUMath.geluGrad($0) }
    let s = (2.0 / Double.pi).squareRoot()
    var worstY = 0.0, worstD = 0.0
    for (i, x) in xs.enumerated() {
      let v = Double(x)
      let t = Foundation.tanh(s * (v + 0.044715 * v * v * v))
      let wantY = 0.5 * v * (1 + t)
      let wantD = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * s * (1 + 3 * 0.044715 * v * v)
      worstY = max(worstY, abs(Double(y[i]) - wantY) / (1 + abs(wantY)))
      worstD = max(worstD, abs(Double(d[i]) - wantD) / (1 + abs(wantD)))
    }
    print("fast gelu: max scaled error \(worstY), derivative \(worstD)")
    XCTAssertLessThan(worstY, 1e-6)
    XCTAssertLessThan(worstD, 2e-6)
  }
}
