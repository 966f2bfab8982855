import Foundation
import XCTest

@testable import HydraPluginAPI

/// `fillNormals` must give the bits of `nextNormal` (libm's log and cos), value for value: the
/// initial weights of every model depend on it. The oracle is libm, called here directly.
final class NormalSeriesTests: XCTestCase {
  /// The libm expression `fillNormals` stands for.
  private func libm(_ u1: Double, _ u2: Double, _ scale: Double) -> Float {
    Float(((-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)) * scale)
  }

  // The series at one value.
  private func seriesLog(_ x: Double) -> Double { NormalSeries.log(x) }
  private func seriesCos(_ a: Double) -> Double? {
    let v = NormalSeries.cos(a)
    return v.isNaN ? nil : v
  }
  private func seriesValue(u1: Double, u2: Double, scale: Double) -> Float? {
    var y = 0.0
    withUnsafePointer(to: u1) { p1 in withUnsafePointer(to: u2) { NormalSeries.values(u1: p1, u2: $0, scale: scale, into: &y, count: 1) } }
    return NormalSeries.surelyRounds(y) ? Float(y) : nil
  }

  func testFilledNormalsAreTheBitsOfTheLibmStream() {
    // 4 seeds x 3 scales x 1M values (GPT-2's 0.02, its residual 0.02 / sqrt(24), and 1).
    for seed: UInt64 in [1, 7, 0xDEAD_BEEF, 1 << 63] {
      for scale in [0.02, 0.02 / 24.0.squareRoot(), 1.0] {
        let n = 1_000_003  // not a multiple of four: the tail too
        var expected = [Float](repeating: 0, count: n)
        var a = SplitMix64(seed: seed)
        for i in 0..<n { expected[i] = Float(a.nextNormal() * scale) }
        var got = [Float](repeating: .nan, count: n)
        var b = SplitMix64(seed: seed)
        got.withUnsafeMutableBufferPointer { b.fillNormals($0, scale: scale) }
        XCTAssertEqual(b.state, a.state, "both drew two uniforms a value")
        let differing = zip(got, expected).filter { $0.bitPattern != $1.bitPattern }.count
        XCTAssertEqual(differing, 0, "seed \(seed) scale \(scale)")
      }
    }
  }

  func testTheSeriesAreWithinTheirStatedErrorOfLibm() {
    // The bound the rounding guard relies on: 2^-46 relative, for log on (0, 1) and for cos
    // on [0, 2 pi) away from its zeros.
    var rng = SplitMix64(seed: 5)
    var worstLog = 0.0, worstCos = 0.0
    for _ in 0..<200_000 {
      let x = max(rng.nextUnit(), 0x1.0p-60)
      worstLog = max(worstLog, abs(seriesLog(x) - log(x)) / abs(log(x)))
      let a = 2 * Double.pi * rng.nextUnit()
      if let c = seriesCos(a) { worstCos = max(worstCos, abs(c - cos(a)) / abs(cos(a))) }
    }
    // Inputs near the hard places: log near 1 and near the sqrt(2) switch, tiny x.
    for j in 1...2_000 {
      for x in [
        1 - Double(j) * 0x1.0p-53, 0.7071067811865476 + Double(j - 1_000) * 0x1.0p-52,
        0x1.0p-60 * (1 + Double(j) * 0x1.0p-40), 0.5 + Double(j) * 0x1.0p-53,
      ] {
        worstLog = max(worstLog, abs(seriesLog(x) - log(x)) / abs(log(x)))
      }
    }
    XCTAssertLessThan(worstLog, 0x1.0p-46)
    XCTAssertLessThan(worstCos, 0x1.0p-46)
  }

  func testValuesNearTheCosineZerosAndTheUniformsEndsAreLibms() {
    // u2 at and around a quarter and three quarters (the cosine's zeros), 0, a half and the top;
    // u1 at its floor, near 1 and around the log's sqrt(2) switch. Where the series give a value,
    // it is libm's; near the zeros they must decline.
    var u2s: [Double] = []
    for centre in [0.0, 0.25, 0.5, 0.75, 1 - 0x1.0p-53] {
      for j in -300...300 { u2s.append(centre + Double(j) * 0x1.0p-53) }
      for j in -300...300 { u2s.append(centre + Double(j) * 0x1.0p-30) }
    }
    u2s = u2s.filter { $0 >= 0 && $0 < 1 }
    var u1s: [Double] = [0x1.0p-60, 0.5, 0.7071067811865476, 0.70710678118654746, 1 - 0x1.0p-53]
    for j in 1...100 { u1s += [1 - Double(j) * 0x1.0p-53, 0x1.0p-60 + Double(j) * 0x1.0p-112] }
    var declined = 0
    for u1 in u1s {
      for u2 in u2s {
        guard let v = seriesValue(u1: u1, u2: u2, scale: 0.02) else {
          declined += 1
          continue
        }
        XCTAssertEqual(v.bitPattern, libm(u1, u2, 0.02).bitPattern, "u1 \(u1) u2 \(u2)")
      }
    }
    // a = 2 pi u2 within 2^-20 of pi/2: u2 within about 2^-23 of a quarter.
    XCTAssertNil(seriesValue(u1: 0.3, u2: 0.25, scale: 1))
    XCTAssertNil(seriesValue(u1: 0.3, u2: 0.75 + 0x1.0p-30, scale: 1))
    XCTAssertGreaterThan(declined, 0)
  }

  func testTheFasterStreamIsFaster() throws {
    // A measurement, printed, not asserted (shared machines are noisy): run it by name.
    guard ProcessInfo.processInfo.environment["HYDRA_NORMALS_TIMING"] != nil else {
      throw XCTSkip("set HYDRA_NORMALS_TIMING=1 to time fillNormals against nextNormal")
    }
    let n = 10_000_000
    var out = [Float](repeating: 0, count: n)
    var a = SplitMix64(seed: 3)
    let t0 = DispatchTime.now().uptimeNanoseconds
    for i in 0..<n { out[i] = Float(a.nextNormal() * 0.02) }
    let t1 = DispatchTime.now().uptimeNanoseconds
    var b = SplitMix64(seed: 3)
    out.withUnsafeMutableBufferPointer { b.fillNormals($0, scale: 0.02) }
    let t2 = DispatchTime.now().uptimeNanoseconds
    print(
      String(
        format: "normals: nextNormal %.1f ns, fillNormals %.1f ns a value", Double(t1 - t0) / Double(n),
        Double(t2 - t1) / Double(n)))
  }
}
