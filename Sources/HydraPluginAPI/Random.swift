import Foundation

/// Deterministic randomness. Every random choice in hydra-mpi (initialisation, data order) comes from
/// a generator seeded by a pure function of the model's seed and a stable name, so that the same
/// model makes the same choices wherever and whenever its pieces run.
public struct SplitMix64: RandomNumberGenerator, Sendable {
  public private(set) var state: UInt64
  public init(seed: UInt64) { state = seed }
  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// The generator as it will be after `n` more calls of `next()` (each call moves the state by
  /// the same constant): lets one stream be drawn in pieces at once, with the same values.
  public func advanced(by n: UInt64) -> SplitMix64 { SplitMix64(seed: state &+ n &* 0x9E37_79B9_7F4A_7C15) }

  /// Uniform in [0, 1) with 53 random bits.
  public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }

  /// Standard normal (Box-Muller in Double, one value per call for simplicity of state): two
  /// calls of `next()` each.
  public mutating func nextNormal() -> Double {
    let (u1, u2) = nextBoxMullerUniforms()
    return SplitMix64.boxMuller(u1, u2)
  }

  /// The two uniforms of one Box-Muller normal, the first kept off 0 (whose log is infinite).
  @inline(__always) mutating func nextBoxMullerUniforms() -> (Double, Double) {
    let u1 = max(nextUnit(), 0x1.0p-60)
    return (u1, nextUnit())
  }

  /// Box-Muller through libm's `log` and `cos`: the values `nextNormal` and `fillNormals` give.
  @inline(__always) static func boxMuller(_ u1: Double, _ u2: Double) -> Double {
    (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
  }

  /// `out[i] = Float(nextNormal() * scale)` for every i in order, bit for bit, and about 2.5 times
  /// faster (NormalSeriesTests' opt-in timing): the logarithm and cosine come from short series
  /// in vectorised loops (relative error below 2^-46, where libm's are within an ulp of 2^-53),
  /// and wherever the faster value could round to another `Float` than libm's (its bits below a
  /// `Float`'s lie within 2^14 ulps of a rounding midpoint, about 1 value in 30,000), or the
  /// cosine is near a zero (its argument within 2^-20 of one), it is computed by `boxMuller`.
  public mutating func fillNormals(_ out: UnsafeMutableBufferPointer<Float>, scale: Double) {
    let block = 256
    withUnsafeTemporaryAllocation(of: Double.self, capacity: 3 * block) { scratch in
      let u1 = scratch.baseAddress!, u2 = u1 + block, y = u2 + block
      var start = 0
      while start < out.count {
        let n = Swift.min(block, out.count - start)
        for i in 0..<n { (u1[i], u2[i]) = nextBoxMullerUniforms() }
        NormalSeries.values(u1: u1, u2: u2, scale: scale, into: y, count: n)
        for i in 0..<n {
          out[start + i] =
            NormalSeries.surelyRounds(y[i]) ? Float(y[i]) : Float(SplitMix64.boxMuller(u1[i], u2[i]) * scale)
        }
        start += n
      }
    }
  }

  /// Uniform in 0..<bound without modulo bias.
  public mutating func nextInt(below bound: Int) -> Int {
    precondition(bound > 0)
    return Int(truncatingIfNeeded: next(upperBound: UInt64(bound)))
  }
}

/// FNV-1a over the UTF-8 bytes, mixed with `seed`: a hash that is stable across runs and platforms
/// (Swift's `Hasher` is randomly seeded per process, so it must never reach a saved result).
public func stableHash(_ text: String, seed: UInt64 = 0) -> UInt64 {
  var h: UInt64 = 0xCBF2_9CE4_8422_2325 ^ seed
  for byte in text.utf8 {
    h ^= UInt64(byte)
    h &*= 0x0000_0100_0000_01B3
  }
  var mix = SplitMix64(seed: h)
  return mix.next()
}

/// Seeds a generator from a base seed and a sequence of integers (step, row, epoch...).
public func derivedSeed(_ base: UInt64, _ parts: UInt64...) -> UInt64 {
  var g = SplitMix64(seed: base)
  var s = g.next()
  for p in parts {
    g = SplitMix64(seed: s ^ (p &* 0xD1B5_4A32_D192_ED03))
    s = g.next()
  }
  return s
}

/// The series behind `SplitMix64.fillNormals`: Box-Muller normals from the same two uniforms as
/// `nextNormal`, by loops of plain arithmetic that the compiler vectorises, and whether each one's
/// `Float` is surely the one libm's `log` and `cos` give.
enum NormalSeries {
  /// log(x) for a normal double 0 < x < 1: x = 2^e m with m in [sqrt(1/2), sqrt(2)), and
  /// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, by its series to s^19 (the next term
  /// is below 2^-54 of the sum). m - 1 is exact, so the result keeps its relative accuracy near 1.
  @inline(__always) static func log(_ x: Double) -> Double {
    let bits = x.bitPattern
    let m1 = Double(bitPattern: (bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000)  // [1, 2)
    let e1 = Double(Int64(bitPattern: (bits >> 52) & 0x7FF) - 1023)
    let big = m1 > 1.4142135623730951
    let m = big ? m1 * 0.5 : m1
    let e = big ? e1 + 1 : e1
    let f = m - 1
    let s = f / (2 + f)
    let z = s * s
    // 2 (s + s^3/3 + ... + s^19/19) = 2s + 2s z (1/3 + z (1/5 + ...)).
    var p = 1.0 / 19
    p = p * z + 1.0 / 17
    p = p * z + 1.0 / 15
    p = p * z + 1.0 / 13
    p = p * z + 1.0 / 11
    p = p * z + 1.0 / 9
    p = p * z + 1.0 / 7
    p = p * z + 1.0 / 5
    p = p * z + 1.0 / 3
    let logM = 2 * s + 2 * s * z * p
    // ln 2 in two parts: the first with its low 16 bits zero, so that e times it is exact.
    let ln2Hi = 0x1.62e42fefa0000p-1
    let ln2Lo = 0x1.cf79abc9e3b3ap-40
    return e * ln2Hi + (e * ln2Lo + logM)
  }

  /// cos(a) for 0 <= a < 2 pi: a = k pi/2 + r with |r| <= pi/4 (pi/2 in two parts, the first
  /// with 33 significant bits, so that a - k p1 is exact), then +-cos r or +-sin r by their
  /// Taylor series (the first omitted terms are below 2^-54). NaN where a is within 2^-20 of a
  /// zero of the cosine, where r's absolute error would be a large part of it.
  @inline(__always) static func cos(_ a: Double) -> Double {
    let p1 = 0x1.921fb544p0
    let p2 = 0x1.0b4611a626331p-34
    // a / (pi/2) to the nearest integer: adding 1.5 * 2^52 leaves it in the low bits.
    let shifted = a * 0x1.45f306dc9c883p-1 + 0x1.8p52
    let k = shifted - 0x1.8p52
    let q = shifted.bitPattern & 3
    let r = (a - k * p1) - k * p2
    let z = r * r
    // sin r = r (1 - z/3! + z^2/5! - ... - z^7/15!)
    var sp = -1.0 / 1_307_674_368_000
    sp = sp * z + 1.0 / 6_227_020_800
    sp = sp * z - 1.0 / 39_916_800
    sp = sp * z + 1.0 / 362_880
    sp = sp * z - 1.0 / 5_040
    sp = sp * z + 1.0 / 120
    sp = sp * z - 1.0 / 6
    let sinR = r + r * z * sp
    // cos r = 1 - z/2 + z^2/4! - ... + z^8/16!
    var cp = 1.0 / 20_922_789_888_000
    cp = cp * z - 1.0 / 87_178_291_200
    cp = cp * z + 1.0 / 479_001_600
    cp = cp * z - 1.0 / 3_628_800
    cp = cp * z + 1.0 / 40_320
    cp = cp * z - 1.0 / 720
    cp = cp * z + 1.0 / 24
    let cosR = 1 - 0.5 * z + z * z * cp
    // Quadrants 0..3: cos r, -sin r, -cos r, sin r.
    let odd = q & 1 == 1
    let v = odd ? sinR : cosR
    let negative = (q &+ 1) & 2 == 2
    let nearZero = odd && abs(r) < 0x1.0p-20
    return nearZero ? .nan : (negative ? -v : v)
  }

  /// y[i] = (-2 log u1[i]).squareRoot() * cos(2 pi u2[i]) * scale by the series: within 2^-46
  /// relatively of libm's (itself within an ulp of exact), about 2^6 ulps of the double; NaN near
  /// a zero of the cosine.
  static func values(
    u1: UnsafePointer<Double>, u2: UnsafePointer<Double>, scale: Double, into y: UnsafeMutablePointer<Double>,
    count: Int
  ) {
    for i in 0..<count { y[i] = -2 * log(u1[i]) }
    // The roots four at a time: Double.squareRoot() in a loop is a call (errno), not a vector op.
    var i = 0
    while i + 4 <= count {
      let root = UnsafeMutableRawPointer(y + i).loadUnaligned(as: SIMD4<Double>.self).squareRoot()
      UnsafeMutableRawPointer(y + i).storeBytes(of: root, as: SIMD4<Double>.self)
      i += 4
    }
    while i < count {
      y[i] = y[i].squareRoot()
      i += 1
    }
    for i in 0..<count { y[i] = y[i] * cos(2 * Double.pi * u2[i]) * scale }
  }

  /// Whether a series value surely rounds to libm's Float: not NaN, and its bits below a Float's
  /// (the low 29 of 52) farther than 2^14 from the midpoint between two Floats, which leaves room
  /// to spare over the series' 2^6 ulps.
  @inline(__always) static func surelyRounds(_ y: Double) -> Bool {
    let low = Int64(bitPattern: y.bitPattern & 0x1FFF_FFFF) - 0x1000_0000
    return !y.isNaN && (low > 0x4000 || low < -0x4000)
  }
}
