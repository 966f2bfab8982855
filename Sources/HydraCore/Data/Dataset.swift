import Foundation

/// A training data set: a token stream cut into windows (`text`, `tokens`) or a table of labelled
/// rows (`csv`), split into training and validation, served as deterministic batches.
///
/// The exact semantics, so that another framework can reproduce the same batches:
///
/// **Token streams.** `text`: the file's bytes are the tokens (vocab must be >= 256). `tokens`: the
/// file is raw little-endian uint16 values with no header (nanoGPT / llm.c `.bin` style); its size
/// must be even and every token must be < vocab. The file is memory-mapped, not copied.
///
/// **Split (token streams).** With N tokens in the file, the validation split is the last
/// `V = Int((Double(N) * validationFraction).rounded(.down))` tokens, the training split the first
/// `N - V`. In a split of n tokens with context T there are `W = (n - 1) / T` (integer division)
/// non-overlapping windows; window w (0-based) covers the tokens `[w*T, w*T + T]` of its split
/// (T+1 tokens): the inputs are the first T, the targets the last T (the inputs shifted by one). The
/// last token of window w is the first of window w+1. A training split with no window is an error, and
/// so is a validation split with no window when validationFraction > 0.
///
/// **csv.** Lines are split at '\n' (a trailing '\r' is dropped), cells at ','; spaces and tabs
/// around a cell are ignored. With `header` the first line is skipped. Blank lines at the end are
/// ignored (elsewhere they are an error). Every row must have as many columns as the first row, at
/// least 2. The label column (`labelColumn`, negative counts from the end) must hold an integer in
/// `0 ..< classes` (`classes` 0: any integer >= 0; "3.0" counts as the integer 3). Every other
/// column, in file order, is a feature: the cell is parsed as a Double (decimal notation only, no
/// nan/inf/hex), converted to Float (round to nearest), then multiplied by `featureScale` in Float.
/// A `.gz` file (by name suffix, or the gzip magic bytes 1f 8b) is decompressed with zlib first.
/// With R rows the validation split is the last `Int((Double(R) * validationFraction).rounded(.down))`
/// rows, training the first ones; there must be at least one training row, and at least one
/// validation row when validationFraction > 0.
///
/// **Example order.** An example is a window (token streams) or a row (csv), indexed within its
/// split. Row i of the training batch of `step` with batch size B is the example `j = step * B + i`
/// of an endless stream: `epoch = j / trainCount`, `position = j % trainCount`. Without shuffle the
/// example is `position`. With shuffle it is `perm[position]`, where `perm` is the Fisher-Yates
/// permutation of `0 ..< trainCount` for that epoch: start from the identity, draw with
/// `g = SplitMix64(seed: derivedSeed(seed, UInt64(epoch)))` (see `Random.swift`) and for
/// `i` from `trainCount - 1` down to 1 swap elements `i` and `g.nextInt(below: i + 1)`, where
/// `nextInt(below: b)` is Lemire's method: `x = g.next()`, `m = x * b` (128-bit); if
/// `low64(m) < b` then `t = (2^64 - b) % b` and while `low64(m) < t` draw again; the result is
/// `high64(m)`. A batch that crosses an epoch end takes its first rows from one epoch and the rest
/// from the next. Validation batches take the validation examples in order, never shuffled.
///
/// **Batches.** Token streams: `tokens` and `targets` are B*T Int32, row-major (row i = example i of
/// the batch); csv: `features` is B*F Float, row-major, and `targets` the B labels.
///
/// Errors in the file or the spec throw `InputError` naming the file (and the line and column for
/// csv). A `Dataset` is immutable after loading and safe to share between threads.
public final class Dataset: @unchecked Sendable {
  public let spec: DataSpec

  private enum Storage {
    /// A token stream: the mapped file, 1 byte (text) or 2 bytes LE (tokens) per token.
    case stream(data: Data, width: Int, count: Int)
    case table(CSVTable)
  }

  private let storage: Storage
  /// Examples in the training / validation split.
  public let trainCount: Int
  public let validationCount: Int
  /// Token streams: the number of tokens in the training split (the validation split starts here).
  private let trainTokens: Int

  /// Recent permutations, one per seed (models sharing the data set each keep theirs), least
  /// recently used dropped first; bounded to about 16 M entries in all.
  private let lock = NSLock()
  private var cachedOrders: [UInt64: (epoch: Int, perm: [Int32], used: Int)] = [:]
  private var cacheClock = 0

  /// csv: the number of features F per row; 0 for token streams.
  public var featureCount: Int {
    if case .table(let table) = storage { return table.featureCount }
    return 0
  }

  private init(spec: DataSpec, storage: Storage, trainCount: Int, validationCount: Int, trainTokens: Int) {
    self.spec = spec
    self.storage = storage
    self.trainCount = trainCount
    self.validationCount = validationCount
    self.trainTokens = trainTokens
  }

  /// Loads and checks the file; throws `InputError` on bad input (never traps).
  public static func load(_ spec: DataSpec) throws -> Dataset {
    let file = spec.path
    let fraction = spec.validationFraction
    guard fraction.isFinite, fraction >= 0, fraction < 1 else {
      throw InputError(file: file, "validation fraction \(fraction) is not in 0 ..< 1")
    }
    switch spec.format {
    case .text, .tokens:
      return try loadStream(spec)
    case .csv:
      var table = try CSVTable.parse(try DataFile.bytesMaybeGzip(file), spec: spec)
      if let seed = spec.splitSeed {
        table = table.permuted(Dataset.permutation(count: table.rows, seed: derivedSeed(seed, 0)))
      }
      let validation = Int((Double(table.rows) * fraction).rounded(.down))
      let train = table.rows - validation
      guard train >= 1 else {
        throw InputError(file: file, "\(table.rows) row(s) leave no training row (validation fraction \(fraction))")
      }
      guard validation >= 1 || fraction == 0 else {
        throw InputError(
          file: file, "\(table.rows) row(s) leave no validation row (validation fraction \(fraction))")
      }
      return Dataset(spec: spec, storage: .table(table), trainCount: train, validationCount: validation, trainTokens: 0)
    }
  }

  private static func loadStream(_ spec: DataSpec) throws -> Dataset {
    let file = spec.path
    let T = spec.context
    guard T >= 1 else { throw InputError(file: file, "context \(T) must be at least 1") }
    if spec.format == .text {
      guard spec.vocab >= 256 else {
        throw InputError(file: file, "format text needs vocab >= 256 (bytes), not \(spec.vocab)")
      }
    } else {
      guard spec.vocab >= 1 else { throw InputError(file: file, "vocab \(spec.vocab) must be at least 1") }
    }
    let data = try DataFile.mapped(file)
    if data.isEmpty { throw InputError(file: file, "is empty") }
    let width = spec.format == .text ? 1 : 2
    guard data.count % width == 0 else {
      throw InputError(file: file, "has \(data.count) bytes, an odd number: a tokens file holds uint16 values")
    }
    let n = data.count / width
    if spec.format == .tokens && spec.vocab < 65536 {
      let vocab = spec.vocab
      let bad: (index: Int, token: Int)? = data.withUnsafeBytes { raw in
        for k in 0..<n {
          let token = Int(raw[2 * k]) | Int(raw[2 * k + 1]) << 8
          if token >= vocab { return (k, token) }
        }
        return nil
      }
      if let bad {
        throw InputError(file: file, "token \(bad.token) at index \(bad.index) is not below vocab \(vocab)")
      }
    }
    let validation = Int((Double(n) * spec.validationFraction).rounded(.down))
    let train = n - validation
    let trainWindows = max(0, (train - 1) / T)
    let validationWindows = max(0, (validation - 1) / T)
    guard trainWindows >= 1 else {
      throw InputError(
        file: file,
        "\(n) tokens: the training split (\(train) tokens) holds no window of context \(T) (\(T + 1) tokens)")
    }
    guard validationWindows >= 1 || spec.validationFraction == 0 else {
      throw InputError(
        file: file,
        "\(n) tokens: the validation split (\(validation) tokens) holds no window of context \(T) (\(T + 1) tokens)")
    }
    guard trainWindows <= Int(Int32.max) else {
      throw InputError(file: file, "\(trainWindows) training windows: too many (at most \(Int32.max))")
    }
    return Dataset(
      spec: spec, storage: .stream(data: data, width: width, count: n), trainCount: trainWindows,
      validationCount: validationWindows, trainTokens: train)
  }

  // MARK: batches

  /// The training batch of `step` (0-based) for a model with this seed: a pure function of
  /// (seed, step, batchSize, shuffle) and the file. See the type's documentation for the order.
  public func trainBatch(step: Int, batchSize: Int, seed: UInt64, shuffle: Bool) -> Batch {
    precondition(step >= 0 && batchSize >= 1, "trainBatch needs step >= 0 and batchSize >= 1")
    var examples = [Int](repeating: 0, count: batchSize)
    var perm: [Int32] = []
    var permEpoch = -1
    for i in 0..<batchSize {
      let j = step * batchSize + i
      let epoch = j / trainCount
      let position = j % trainCount
      if shuffle {
        if epoch != permEpoch {
          perm = permutation(seed: seed, epoch: epoch)
          permEpoch = epoch
        }
        examples[i] = Int(perm[position])
      } else {
        examples[i] = position
      }
    }
    return batch(examples, validation: false)
  }

  /// Validation examples in file order, cut into batches of `batchSize` (the last one may be
  /// smaller), at most `limit` batches (nil = all).
  public func validationBatches(batchSize: Int, limit: Int?) -> [Batch] {
    precondition(batchSize >= 1, "validationBatches needs batchSize >= 1")
    var batches: [Batch] = []
    var start = 0
    while start < validationCount {
      if let limit, batches.count >= limit { break }
      let end = min(start + batchSize, validationCount)
      batches.append(batch(Array(start..<end), validation: true))
      start = end
    }
    return batches
  }

  /// The permutation of the training examples for (seed, epoch); the most recent one of each seed
  /// is cached, so that consecutive steps do not redo it.
  /// The Fisher-Yates permutation of `0 ..< count` drawn from `SplitMix64(seed: seed)`.
  static func permutation(count: Int, seed: UInt64) -> [Int32] {
    var perm = Array(0..<Int32(count))
    var g = SplitMix64(seed: seed)
    var i = count - 1
    while i >= 1 {
      perm.swapAt(i, g.nextInt(below: i + 1))
      i -= 1
    }
    return perm
  }

  func permutation(seed: UInt64, epoch: Int) -> [Int32] {
    lock.lock()
    cacheClock += 1
    if let cached = cachedOrders[seed], cached.epoch == epoch {
      cachedOrders[seed]!.used = cacheClock
      lock.unlock()
      return cached.perm
    }
    lock.unlock()
    let perm = Dataset.permutation(count: trainCount, seed: derivedSeed(seed, UInt64(epoch)))
    lock.lock()
    let capacity = max(1, min(64, 16_777_216 / trainCount))
    while cachedOrders.count >= capacity, cachedOrders[seed] == nil,
      let oldest = cachedOrders.min(by: { $0.value.used < $1.value.used })?.key
    {
      cachedOrders.removeValue(forKey: oldest)
    }
    cacheClock += 1
    cachedOrders[seed] = (epoch, perm, cacheClock)
    lock.unlock()
    return perm
  }

  /// Assembles the batch of the given examples (indices within the training or validation split).
  private func batch(_ examples: [Int], validation: Bool) -> Batch {
    let rows = examples.count
    switch storage {
    case .table(let table):
      let F = table.featureCount
      let offset = validation ? trainCount : 0
      var features = [Float](repeating: 0, count: rows * F)
      var targets = [Int32](repeating: 0, count: rows)
      for (i, e) in examples.enumerated() {
        let row = offset + e
        features.withUnsafeMutableBufferPointer { out in
          table.features.withUnsafeBufferPointer { src in
            for f in 0..<F { out[i * F + f] = src[row * F + f] }
          }
        }
        targets[i] = table.labels[row]
      }
      return Batch(rows: rows, features: features, targets: targets)
    case .stream(let data, let width, _):
      let T = spec.context
      let base = validation ? trainTokens : 0
      var tokens = [Int32](repeating: 0, count: rows * T)
      var targets = [Int32](repeating: 0, count: rows * T)
      data.withUnsafeBytes { raw in
        func token(_ k: Int) -> Int32 {
          width == 1 ? Int32(raw[k]) : Int32(raw[2 * k]) | Int32(raw[2 * k + 1]) << 8
        }
        for (i, e) in examples.enumerated() {
          let first = base + e * T
          var previous = token(first)
          for t in 0..<T {
            let next = token(first + t + 1)
            tokens[i * T + t] = previous
            targets[i * T + t] = next
            previous = next
          }
        }
      }
      return Batch(rows: rows, tokens: tokens, targets: targets)
    }
  }

  // MARK: statistics

  /// The unigram entropy (nats) of the training split, from counts: `-sum p ln p` with
  /// `p = count / total`. Token streams: over all tokens of the training split (the first N - V);
  /// csv: over the labels of the training rows (the loss of always predicting the class priors).
  public func unigramEntropy() -> Double {
    var counts: [Int]
    var total = 0
    switch storage {
    case .table(let table):
      counts = [Int](repeating: 0, count: Int(table.labels.max() ?? 0) + 1)
      for r in 0..<trainCount { counts[Int(table.labels[r])] += 1 }
      total = trainCount
    case .stream(let data, let width, _):
      counts = [Int](repeating: 0, count: width == 1 ? 256 : 65536)
      data.withUnsafeBytes { raw in
        if width == 1 {
          for k in 0..<trainTokens { counts[Int(raw[k])] += 1 }
        } else {
          for k in 0..<trainTokens { counts[Int(raw[2 * k]) | Int(raw[2 * k + 1]) << 8] += 1 }
        }
      }
      total = trainTokens
    }
    var h = 0.0
    for c in counts where c > 0 {
      let p = Double(c) / Double(total)
      h -= p * log(p)
    }
    return h
  }
}
