import HydraCore
import HydraKernelsCPU
import HydraKernelsReference
import XCTest

/// A heap buffer of Floats for kernel tests: a stable pointer, filled from an array, read back.
final class Buf {
  let count: Int
  let p: UnsafeMutablePointer<Float>

  init(_ values: [Float]) {
    count = values.count
    p = .allocate(capacity: max(values.count, 1))
    p.initialize(repeating: 0, count: max(values.count, 1))
    for (i, v) in values.enumerated() { p[i] = v }
  }

  convenience init(count: Int, value: Float = 0) { self.init([Float](repeating: value, count: count)) }

  deinit { p.deallocate() }

  var c: UnsafePointer<Float> { UnsafePointer(p) }
  var array: [Float] { Array(UnsafeBufferPointer(start: p, count: count)) }
  func copy() -> Buf { Buf(array) }
}

/// Seeded random test data (SplitMix64, so every run sees the same numbers).
struct TestRandom {
  var g: SplitMix64
  init(_ seed: UInt64) { g = SplitMix64(seed: seed) }

  /// Uniform in [-scale, scale).
  mutating func uniform(_ n: Int, scale: Float = 1) -> [Float] {
    (0..<n).map { _ in Float(g.nextUnit() * 2 - 1) * scale }
  }

  mutating func normal(_ n: Int, mean: Float = 0, std: Float = 1) -> [Float] {
    (0..<n).map { _ in mean + std * Float(g.nextNormal()) }
  }

  mutating func ints(_ n: Int, below bound: Int) -> [Int32] {
    (0..<n).map { _ in Int32(g.nextInt(below: bound)) }
  }
}

/// The thread counts every cpu test runs at: 3 divides none of the test shapes evenly, and 3 and 4
/// exceed the cores of a small test machine (the pool must still be right oversubscribed).
let testThreads = [1, 2, 3, 4]

/// Asserts |a - b| <= tol * (1 + |b|) elementwise (b the reference): an absolute bound for small
/// values and a relative one for large ones. NaN anywhere fails.
func assertClose(
  _ a: [Float], _ b: [Float], tol: Float, _ what: @autoclosure () -> String,
  file: StaticString = #filePath, line: UInt = #line
) {
  XCTAssertEqual(a.count, b.count, "\(what()): sizes", file: file, line: line)
  var worst: Float = 0
  var worstIndex = -1
  for i in 0..<min(a.count, b.count) {
    let err = abs(a[i] - b[i]) / (1 + abs(b[i]))
    if !(err <= worst) {
      worst = err.isNaN ? .infinity : err
      worstIndex = i
      if err.isNaN { break }
    }
  }
  if worstIndex >= 0 && !(worst <= tol) {
    XCTFail(
      "\(what()): element \(worstIndex) is \(a[worstIndex]), reference \(b[worstIndex]) "
        + "(scaled error \(worst) > \(tol))", file: file, line: line)
  }
}

/// Asserts the same bits (NaN payloads and signed zeros included).
func assertBitwise(
  _ a: [Float], _ b: [Float], _ what: @autoclosure () -> String,
  file: StaticString = #filePath, line: UInt = #line
) {
  XCTAssertEqual(a.count, b.count, "\(what()): sizes", file: file, line: line)
  for i in 0..<min(a.count, b.count) where a[i].bitPattern != b[i].bitPattern {
    XCTFail("\(what()): element \(i) is \(a[i]), expected \(b[i]) bit for bit", file: file, line: line)
    return
  }
}
