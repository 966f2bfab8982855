import HydraPluginAPI

/// How hydra-mpi names its messages: (kind, model, shard, step) packed into one MPI tag.
///
/// MPI matches a receive to a message by (communicator, source, tag) only, so two messages that could
/// be in flight between the same two ranks at once must differ in their tag. Many models train at
/// once, and one rank may be sending another the activations of model 3's shard 1 while a gradient of
/// model 7's shard 2 travels the same way: the tag says which is which.
///
/// Layout, most significant bits first, in `bitsAvailable` = floor(log2(MPI_TAG_UB + 1)) bits
/// (31 under OpenMPI, where MPI_TAG_UB is 2^31 - 1; the MPI standard only promises 15):
///
///     | kind (3 bits) | model (modelBits) | shard (shardBits) | step mod 2^stepBits (the rest) |
///
/// `init(models:shards:upperBound:)` gives model and shard just enough bits for the job and leaves
/// the rest to the step. Kind, model and shard must fit their fields: a value that does not is an
/// error (`TagError`), never a silently wrapped tag. The step is the one field taken modulo its width:
/// one model's steps are a strict chain (step s + 1 of a shard starts only after step s of that shard
/// completed on both sides), so two messages of the same (kind, model, shard) whose steps differ by a
/// whole period can never be in flight together; and MPI delivers messages with the same source and
/// tag in the order they were sent. At least 4 step bits (16 steps) are required.
public struct TagSpace: Equatable, Sendable, CustomStringConvertible {
  /// What a message carries (the runtime's `MessageKind`). Eight kinds: the field is 3 bits wide.
  public typealias Kind = MessageKind

  public static let kindBits = 3
  public static let minimumStepBits = 4

  public let modelBits: Int
  public let shardBits: Int
  public let stepBits: Int
  /// MPI_TAG_UB the layout was made for.
  public let upperBound: Int32

  public var maxModels: Int { 1 << modelBits }
  public var maxShards: Int { 1 << shardBits }
  /// Steps repeat their tags with this period.
  public var stepPeriod: Int { 1 << stepBits }

  /// How many tag bits an MPI with this MPI_TAG_UB offers (all tags 0 ..< 2^bits are valid).
  public static func bitsAvailable(upperBound: Int32) -> Int {
    precondition(upperBound >= 0, "MPI_TAG_UB must be non-negative")
    // Largest b with 2^b - 1 <= upperBound.
    return Int.bitWidth - (Int(upperBound) + 1).leadingZeroBitCount - 1
  }

  /// Bits needed to number `n` things 0 ..< n.
  public static func bits(for n: Int) -> Int {
    n <= 1 ? 0 : Int.bitWidth - (n - 1).leadingZeroBitCount
  }

  /// A layout with explicit field widths.
  public init(modelBits: Int, shardBits: Int, stepBits: Int, upperBound: Int32) throws {
    guard modelBits >= 0, shardBits >= 0, stepBits >= TagSpace.minimumStepBits else {
      throw TagError(
        "tag layout needs non-negative widths and at least \(TagSpace.minimumStepBits) step bits "
          + "(model \(modelBits), shard \(shardBits), step \(stepBits))")
    }
    let available = TagSpace.bitsAvailable(upperBound: upperBound)
    let used = TagSpace.kindBits + modelBits + shardBits + stepBits
    guard used <= available else {
      throw TagError(
        "tag layout needs \(used) bits (kind \(TagSpace.kindBits) + model \(modelBits) + shard \(shardBits) "
          + "+ step \(stepBits)) but MPI_TAG_UB = \(upperBound) allows \(available)")
    }
    self.modelBits = modelBits
    self.shardBits = shardBits
    self.stepBits = stepBits
    self.upperBound = upperBound
  }

  /// The layout for a job of `models` models with at most `shards` shards each: just enough bits for
  /// both, all the rest for the step.
  public init(models: Int, shards: Int, upperBound: Int32) throws {
    let m = TagSpace.bits(for: models)
    let s = TagSpace.bits(for: shards)
    let available = TagSpace.bitsAvailable(upperBound: upperBound)
    let step = available - TagSpace.kindBits - m - s
    guard step >= TagSpace.minimumStepBits else {
      throw TagError(
        "\(models) models x \(shards) shards do not fit MPI's tags: they need \(TagSpace.kindBits + m + s) bits "
          + "plus \(TagSpace.minimumStepBits) for the step, but MPI_TAG_UB = \(upperBound) allows \(available)")
    }
    try self.init(modelBits: m, shardBits: s, stepBits: step, upperBound: upperBound)
  }

  /// The tag of one message. Throws when kind, model or shard do not fit their fields or the step is
  /// negative; the step itself is taken modulo `stepPeriod` (see the type's documentation).
  public func tag(_ kind: Kind, model: Int, shard: Int, step: Int) throws -> Int32 {
    guard model >= 0, model < maxModels else {
      throw TagError("model \(model) does not fit the tag's model field (\(modelBits) bits: 0..<\(maxModels))")
    }
    guard shard >= 0, shard < maxShards else {
      throw TagError("shard \(shard) does not fit the tag's shard field (\(shardBits) bits: 0..<\(maxShards))")
    }
    guard step >= 0 else { throw TagError("step \(step) is negative") }
    var value = kind.rawValue
    value = value << modelBits | model
    value = value << shardBits | shard
    value = value << stepBits | (step & (stepPeriod - 1))
    assert(value <= Int(upperBound), "tag \(value) above MPI_TAG_UB \(upperBound)")
    return Int32(value)
  }

  /// The fields of a tag made by `tag(_:model:shard:step:)` (the step modulo `stepPeriod`).
  public func decode(_ tag: Int32) -> (kind: Kind?, model: Int, shard: Int, step: Int) {
    var value = Int(tag)
    let step = value & (stepPeriod - 1)
    value >>= stepBits
    let shard = value & (maxShards - 1)
    value >>= shardBits
    let model = value & (maxModels - 1)
    value >>= modelBits
    return (Kind(rawValue: value), model, shard, step)
  }

  public var description: String {
    "tags: kind \(TagSpace.kindBits) bits, model \(modelBits), shard \(shardBits), step \(stepBits) "
      + "(MPI_TAG_UB \(upperBound))"
  }

  /// Checks the scheme itself, by exhaustion on small layouts and on the edges of `layout`: distinct
  /// (kind, model, shard, step mod period) give distinct tags, every tag is in 0...upperBound, decode
  /// inverts tag, and every overflowing field is an error. Throws a `TagError` naming the first failure.
  public static func selfCheck(layout: TagSpace) throws {
    func expect(_ condition: Bool, _ what: @autoclosure () -> String) throws {
      if !condition { throw TagError("tag self-check: \(what())") }
    }
    // 1. Exhaustive on small layouts (every combination, every tag distinct and in range).
    for (m, s, t) in [(0, 0, 4), (2, 3, 4), (3, 2, 5), (1, 4, 4)] {
      let small = try TagSpace(modelBits: m, shardBits: s, stepBits: t, upperBound: 32767)
      var seen = Set<Int32>()
      for kind in Kind.allCases {
        for model in 0..<small.maxModels {
          for shard in 0..<small.maxShards {
            for step in 0..<small.stepPeriod {
              let tag = try small.tag(kind, model: model, shard: shard, step: step)
              try expect(tag >= 0 && tag <= 32767, "tag \(tag) out of range in \(small)")
              try expect(seen.insert(tag).inserted, "tag \(tag) repeated in \(small)")
              let d = small.decode(tag)
              try expect(
                d.kind == kind && d.model == model && d.shard == shard && d.step == step,
                "decode(\(tag)) = \(d) in \(small)")
              try expect(
                try small.tag(kind, model: model, shard: shard, step: step + small.stepPeriod) == tag,
                "step period in \(small)")
            }
          }
        }
      }
      try expect(seen.count == Kind.allCases.count << (m + s + t), "count in \(small)")
    }
    // 2. The given layout: edges of every field round-trip and stay in range; a pseudo-random sample
    //    of distinct inputs gives distinct tags.
    var seen = [Int32: (Int, Int, Int, Int)]()
    var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
    func next(_ n: Int) -> Int {
      rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return Int((rng >> 33) % UInt64(n))
    }
    var inputs: [(Int, Int, Int, Int)] = []
    for kind in [0, Kind.allCases.count - 1] {
      for model in [0, layout.maxModels - 1] {
        for shard in [0, layout.maxShards - 1] {
          for step in [0, layout.stepPeriod - 1] { inputs.append((kind, model, shard, step)) }
        }
      }
    }
    for _ in 0..<20_000 {
      inputs.append(
        (next(Kind.allCases.count), next(layout.maxModels), next(layout.maxShards), next(layout.stepPeriod)))
    }
    for (k, m, s, t) in inputs {
      let tag = try layout.tag(Kind(rawValue: k)!, model: m, shard: s, step: t)
      try expect(tag >= 0 && tag <= layout.upperBound, "tag \(tag) out of range in \(layout)")
      let d = layout.decode(tag)
      try expect(d.kind?.rawValue == k && d.model == m && d.shard == s && d.step == t, "decode(\(tag)) in \(layout)")
      if let other = seen[tag] {
        try expect(other == (k, m, s, t), "inputs \(other) and \((k, m, s, t)) share tag \(tag) in \(layout)")
      }
      seen[tag] = (k, m, s, t)
    }
    // 3. Overflow is an error, not a wrapped tag.
    func throwsTagError(_ body: () throws -> Int32) -> Bool {
      do {
        _ = try body()
        return false
      } catch is TagError { return true } catch { return false }
    }
    try expect(
      throwsTagError { try layout.tag(.activation, model: layout.maxModels, shard: 0, step: 0) }, "model overflow")
    try expect(throwsTagError { try layout.tag(.activation, model: -1, shard: 0, step: 0) }, "negative model")
    try expect(
      throwsTagError { try layout.tag(.gradient, model: 0, shard: layout.maxShards, step: 0) }, "shard overflow")
    try expect(throwsTagError { try layout.tag(.gradient, model: 0, shard: 0, step: -1) }, "negative step")
    do {
      _ = try TagSpace(models: 1 << 10, shards: 1 << 10, upperBound: 32767)
      throw TagError("tag self-check: a layout too large for MPI_TAG_UB 32767 was accepted")
    } catch let error as TagError where !error.message.hasPrefix("tag self-check") {}
  }
}

/// A tag field that does not fit, or a layout that does not fit MPI_TAG_UB.
public struct TagError: Error, CustomStringConvertible, Sendable {
  public let message: String
  public init(_ message: String) { self.message = message }
  public var description: String { "MPI tag: \(message)" }
}
