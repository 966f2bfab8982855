/// Vectorised transcendental functions for the `cpu` kernels: 16 lanes at a time, no calls into libm.
///
/// They are pure functions of their input (no tables, no state), so they are deterministic and give
/// the same bits for the same lane value whatever the position of the lane.
public enum CPUMath {
  public typealias V = SIMD16<Float>

  /// Inputs below this give 0 (exp(-103.97) is half the smallest subnormal).
  public static let expLowerBound: Float = -103.972_08
  /// Inputs above this give +infinity (ln of the largest finite Float).
  public static let expUpperBound: Float = 88.722_83

  /// e^x, lane by lane: x = k ln2 + r with |r| <= ln2/2 (Cody-Waite, two-part ln2), e^r by Cephes'
  /// degree-7 polynomial, then 2^k applied as two exact power-of-two factors so that results in the
  /// subnormal range are right too. Measured against glibc's expf: <= 2 ulp for normal results
  /// (see KernelsTests). x < -103.97 and -inf give 0; x > 88.72 and +inf give +inf; NaN gives NaN.
  @inline(__always)
  public static func exp(_ x: V) -> V {
    // Out-of-range lanes (their results are replaced below) compute e^0 meanwhile: clamping them to
    // the bounds instead would run subnormal arithmetic, which costs a microcode assist per
    // instruction on x86 (softmax rows' masked -inf lanes hit this on every row).
    var xc = x
    xc.replace(with: 0, where: x .< expLowerBound)
    xc.replace(with: 0, where: x .> expUpperBound)
    var result = expCore(xc, split: true)
    result.replace(with: 0, where: x .< expLowerBound)
    result.replace(with: .infinity, where: x .> expUpperBound)
    return result
  }

  /// e^x for x already within [expLowerBound, expUpperBound]; with `split: false`, only within
  /// [-87.33, 88.37] (normal results, 2^k applied as one factor).
  @inline(__always)
  static func expCore(_ xc: V, split: Bool) -> V {
    // Round x/ln2 to the nearest integer with the 1.5 * 2^23 trick (valid for |x/ln2| < 2^22); the
    // integer then sits in the low mantissa bits of `t`.
    let magic: Float = 12_582_912
    // Multiply-adds are fused (`addingProduct`: one rounding, one instruction where the target has
    // FMA); Swift never fuses `a * b + c` by itself.
    let t = V(repeating: magic).addingProduct(xc, 1.442_695_04)
    let kf = t - magic
    var r = xc.addingProduct(kf, -0.693_359_375)
    r = r.addingProduct(kf, 2.121_944_4e-4)
    var p = V(repeating: 1.987_569_15e-4)
    p = V(repeating: 1.398_199_950_7e-3).addingProduct(p, r)
    p = V(repeating: 8.333_451_907_3e-3).addingProduct(p, r)
    p = V(repeating: 4.166_579_589_4e-2).addingProduct(p, r)
    p = V(repeating: 1.666_666_545_9e-1).addingProduct(p, r)
    p = V(repeating: 5.000_000_120_1e-1).addingProduct(p, r)
    p = r.addingProduct(p, r * r) + 1
    // k in [-150, 128]: with `split`, two halves, each a normal power of two.
    let k = unsafeBitCast(t, to: SIMD16<Int32>.self) &- 0x4B40_0000
    if !split {
      return p * unsafeBitCast((k &+ 127) &<< 23, to: V.self)
    }
    let k1 = k &>> 1
    let k2 = k &- k1
    let s1 = unsafeBitCast((k1 &+ 127) &<< 23, to: V.self)
    let s2 = unsafeBitCast((k2 &+ 127) &<< 23, to: V.self)
    return p * s1 * s2
  }

  /// e^z for GELU: z clamped to [-87, 80] (e^-87 is already negligible next to 1 in 1 / (1 + e)).
  @inline(__always)
  static func geluExp(_ z: V) -> V {
    var zc = z
    zc.replace(with: 80, where: z .> 80)
    zc.replace(with: -87, where: z .< -87)
    return expCore(zc, split: false)
  }

  /// tanh(x) = sign(x) (1 - e) / (1 + e) with e = e^(-2|x|) in [0, 1]: absolute error below 1e-7
  /// over the whole line (the relative error grows near 0, where tanh is tiny). NaN gives NaN.
  @inline(__always)
  public static func tanh(_ x: V) -> V {
    let a = x.replacing(with: -x, where: x .< 0)
    let e = exp(-2 * a)
    let t = (1 - e) / (1 + e)
    return t.replacing(with: -t, where: x .< 0)
  }

  static let geluScale: Float = 0.797_884_560_8  // sqrt(2/pi)
  static let geluCubic: Float = 0.044_715

  /// GPT-2's GELU, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), computed in the
  /// equivalent logistic form x / (1 + e^(-2u)) (0.5 (1 + tanh u) = 1 / (1 + e^(-2u))), which has no
  /// cancellation for negative x. The exponent is clamped to [-87, 80] so that e stays finite.
  @inline(__always)
  public static func gelu(_ x: V) -> V {
    let u = geluScale * x.addingProduct(x * x * x, geluCubic)
    let s = 1 / (1 + geluExp(-2 * u))
    return x * s
  }

  /// GELU'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) u' = s + 2 x s (1 - s) u' with s = 1/(1+e),
  /// e = e^(-2u), and 1 - s = e s (no cancellation).
  @inline(__always)
  public static func geluGrad(_ x: V) -> V { geluAndGrad(x).1 }

  /// (gelu(x), geluGrad(x)) from one exponential; u and s as `gelu` computes them, so the first is
  /// `gelu`'s bits.
  @inline(__always)
  public static func geluAndGrad(_ x: V) -> (V, V) {
    let x2 = x * x
    let u = geluScale * x.addingProduct(x2 * x, geluCubic)
    let du = geluScale * V(repeating: 1).addingProduct(x2, 3 * geluCubic)
    let e = geluExp(-2 * u)
    let s = 1 / (1 + e)
    return (x * s, s.addingProduct(s, 2 * x * du * (e * s)))
  }
}

// MARK: - Loads and stores

typealias V16 = SIMD16<Float>

@inline(__always)
func load16(_ p: UnsafePointer<Float>) -> V16 {
  UnsafeRawPointer(p).loadUnaligned(as: V16.self)
}

@inline(__always)
func load16(_ p: UnsafeMutablePointer<Float>) -> V16 {
  UnsafeRawPointer(p).loadUnaligned(as: V16.self)
}

@inline(__always)
func store16(_ v: V16, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: V16.self)
}

/// The first `n` (< 16) floats at `p`, the other lanes `fill`.
@inline(__always)
func loadPartial(_ p: UnsafePointer<Float>, _ n: Int, fill: Float) -> V16 {
  var v = V16(repeating: fill)
  for i in 0..<n { v[i] = p[i] }
  return v
}

@inline(__always)
func storePartial(_ v: V16, _ p: UnsafeMutablePointer<Float>, _ n: Int) {
  for i in 0..<n { p[i] = v[i] }
}

// MARK: - Reductions and lane-wise max
//
// The standard library's `pointwiseMax` and `max()` on float vectors go lane by lane through memory
// (IEEE maximum with NaN handling); these compare-and-select forms stay in registers. The horizontal
// reductions add halves in a fixed tree, so their order (and result) is fixed.

@inline(__always)
func vmax(_ a: V16, _ b: V16) -> V16 { a.replacing(with: b, where: b .> a) }

@inline(__always)
func hmax(_ v: V16) -> Float {
  let a = v.lowHalf.replacing(with: v.highHalf, where: v.highHalf .> v.lowHalf)
  let b = a.lowHalf.replacing(with: a.highHalf, where: a.highHalf .> a.lowHalf)
  let c = b.lowHalf.replacing(with: b.highHalf, where: b.highHalf .> b.lowHalf)
  return c.y > c.x ? c.y : c.x
}

@inline(__always)
func hsum(_ v: V16) -> Float {
  let a = v.lowHalf + v.highHalf
  let b = a.lowHalf + a.highHalf
  let c = b.lowHalf + b.highHalf
  return c.x + c.y
}

/// Lane indices 0..<16, for masking the lanes of a full-width load beyond a row's end. Floats:
/// float comparisons compile to vector compares, the stdlib's Int32 vector comparisons go lane by lane.
let laneIndex = V16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)

/// The first `n` (< 16) floats at `p`, other lanes `fill`; with `full` the caller guarantees that
/// 16 floats are readable at `p` (their values beyond `n` may be anything, NaN included).
@inline(__always)
func loadTail(_ p: UnsafePointer<Float>, _ n: Int, fill: Float, full: Bool) -> V16 {
  full ? load16(p).replacing(with: fill, where: laneIndex .>= Float(n)) : loadPartial(p, n, fill: fill)
}

@inline(__always)
func anyLane(_ m: SIMDMask<SIMD16<Int32>>) -> Bool {
  hmax(V16(repeating: 0).replacing(with: 1, where: m)) > 0
}
