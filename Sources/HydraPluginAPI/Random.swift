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
    let u1 = max(nextUnit(), 0x1.0p-60)
    let u2 = nextUnit()
    return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
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
