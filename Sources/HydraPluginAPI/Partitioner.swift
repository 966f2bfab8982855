import Foundation

/// What a partitioner is asked: one model's blocks with their costs, and the device budget.
///
/// The footprint of a shard (blocks `l..<r`) is, to the byte, what the runtime holds on the device
/// while one of its tasks runs: the shard's state (parameters, gradients, optimizer state; a tied
/// replica's value and gradient) and the task's **working set**, the larger of a forward's and a
/// backward's (`workingSet`). Nothing else stays on a device between tasks: what a model keeps
/// from one task to the next waits in the host store. So the budget a model needs depends on its
/// largest shard, never on how many models the job has.
public struct PartitionRequest: Sendable {
  /// The costs of the model's blocks, in model order.
  public var blocks: [BlockCosts]
  /// The blocks' names ("wte", "h.3", "head"), for messages.
  public var blockNames: [String]
  public var batchSize: Int
  /// Optimizer state tensors per parameter: sgd 1 (momentum), adamw 2 (m, v).
  public var stateCopies: Int
  /// Device memory in bytes; `Int.max` = unlimited.
  public var budget: Int
  /// Leave room for two shards at once (the next one is promoted while this one runs): each shard must
  /// fit in half the budget.
  public var doubleBuffering: Bool
  /// Whether a shard recomputes its blocks' activations in the backward instead of keeping them.
  public var activationCheckpointing: Bool
  /// Measured forward + backward seconds per block (a profile). nil: 3 x forward FLOPs x batch size
  /// stands in for time (a backward costs about twice a forward).
  public var blockSeconds: [Double]?
  /// Bytes per sample of each block's input activation (block `i - 1`'s output); entry 0 is unused
  /// (block 0 reads the batch). Each must be <= the previous block's `activationBytesPerSample`, which
  /// includes its output. nil: the previous block's `activationBytesPerSample` (an upper bound).
  public var inputBytesPerSample: [Int]?
  /// Weights one block owns and another uses a replica of (the `gpt` head's token embedding): a
  /// task of either shard holds one copy of the value (forward) or of the replica's gradient
  /// (backward) in transit.
  public var ties: [TiedWeight]
  /// The `[partitioner]` table without `name`: the plugin's options.
  public var options: [String: ConfigValue]

  public init(
    blocks: [BlockCosts], blockNames: [String]? = nil, batchSize: Int, stateCopies: Int,
    budget: Int = .max, doubleBuffering: Bool = false, activationCheckpointing: Bool = false,
    blockSeconds: [Double]? = nil, inputBytesPerSample: [Int]? = nil, ties: [TiedWeight] = [],
    options: [String: ConfigValue] = [:]
  ) {
    let names = blockNames ?? blocks.indices.map { String($0) }
    precondition(names.count == blocks.count, "one name per block")
    precondition(batchSize >= 1 && stateCopies >= 0 && budget >= 0, "batch size, state copies or budget out of range")
    if let s = blockSeconds {
      precondition(s.count == blocks.count && s.allSatisfy { $0.isFinite && $0 >= 0 }, "one finite time >= 0 per block")
    }
    if let inputs = inputBytesPerSample {
      precondition(inputs.count == blocks.count, "one input size per block")
      for i in inputs.indices.dropFirst() {
        precondition(
          inputs[i] >= 0 && inputs[i] <= blocks[i - 1].activationBytesPerSample,
          "block \(i)'s input is part of block \(i - 1)'s activations")
      }
    }
    self.blocks = blocks
    self.blockNames = names
    self.batchSize = batchSize
    self.stateCopies = stateCopies
    self.budget = budget
    self.doubleBuffering = doubleBuffering
    self.activationCheckpointing = activationCheckpointing
    self.blockSeconds = blockSeconds
    self.inputBytesPerSample = inputBytesPerSample
    self.ties = ties
    self.options = options
  }

  /// What one shard may use: the budget, or half of it with double buffering.
  public var shardBudget: Int {
    budget == .max ? .max : (doubleBuffering ? budget / 2 : budget)
  }

  /// Bytes per sample of the activation a shard starting at block `i` holds as its input.
  public func inputBytes(_ i: Int) -> Int {
    guard i > 0 else { return 0 }
    return inputBytesPerSample?[i] ?? blocks[i - 1].activationBytesPerSample
  }

  /// Bytes the shard of blocks `range` needs on the device while it runs: its state and its
  /// working set. Saturates at `Int.max` rather than overflowing.
  public func footprint(_ range: Range<Int>) -> Int {
    guard !range.isEmpty else { return 0 }
    return saturatingSum(stateBytes(range), workingSet(range))
  }

  /// Bytes of the shard's parameters, gradients and optimizer state.
  public func stateBytes(_ range: Range<Int>) -> Int {
    range.reduce(0) { saturatingSum($0, blocks[$1].stateBytes(stateCopies: stateCopies)) }
  }

  /// Bytes one task of the shard allocates beside its state, the larger of
  /// - a forward: its input (the previous shard's output, fetched), every block's kept activations,
  ///   the forward scratch, its output (a copy, posted for the next shard);
  /// - a backward: its input again, the kept activations (brought back, or recomputed), the
  ///   backward scratch (and, recomputing, the forward's), the incoming gradient (output-sized) and
  ///   the outgoing one (input-sized);
  /// each with one copy of every tied weight the shard's blocks own or replicate. Within a task
  /// nothing is freed before it ends, so this is also the task's peak.
  public func workingSet(_ range: Range<Int>) -> Int {
    guard !range.isEmpty else { return 0 }
    let l = range.lowerBound, r = range.upperBound
    var kept = 0
    var forwardScratch: [String: Int] = [:], backwardScratch: [String: Int] = [:]
    for i in range {
      let c = blocks[i]
      kept = saturatingSum(kept, c.activationBytesPerSample)
      // One workspace per shard: each role as large as its largest user.
      for (role, bytes) in c.forwardWorkspace {
        forwardScratch[Self.role(role, block: i)] = max(forwardScratch[Self.role(role, block: i)] ?? 0, bytes)
      }
      for (role, bytes) in c.workspace {
        backwardScratch[Self.role(role, block: i)] = max(backwardScratch[Self.role(role, block: i)] ?? 0, bytes)
      }
    }
    if activationCheckpointing && r < blocks.count {
      for (role, bytes) in forwardScratch { backwardScratch[role] = max(backwardScratch[role] ?? 0, bytes) }
    }
    let input = l > 0 ? inputBytes(l) : 0
    let output = r < blocks.count ? inputBytes(r) : 0
    let forwardPerSample = [input, kept, forwardScratch.values.reduce(0, saturatingSum), output].reduce(
      0, saturatingSum)
    let backwardPerSample = [input, kept, backwardScratch.values.reduce(0, saturatingSum), output, input].reduce(
      0, saturatingSum)
    var tied = 0
    for t in ties where range.contains(t.owner) || range.contains(t.replica) { tied = saturatingSum(tied, t.bytes) }
    let perSample = max(forwardPerSample, backwardPerSample)
    return saturatingSum(saturatingProduct(perSample, batchSize), tied)
  }

  /// A workspace role as the blocks share it: "dx" alternates between two buffers by block index.
  static func role(_ role: String, block: Int) -> String { role == "dx" ? "dx\(block % 2)" : role }

  /// The time of one forward + backward of the shard: measured, or its FLOPs proxy. Summed left to
  /// right, so that a partitioner that sums the same way gets bit-identical values.
  public func seconds(_ range: Range<Int>) -> Double {
    var total = 0.0
    for i in range { total += blockSeconds(i) }
    return total
  }

  /// One block's forward + backward time (measured, or `TaskCost` in FLOPs).
  public func blockSeconds(_ i: Int) -> Double {
    blockSeconds?[i] ?? TaskCost.stepSeconds([blocks[i]], batchSize: batchSize)
  }

  /// Throws the `cluster.device_memory` error for the first block that does not fit by itself.
  public func checkBlocksFit() throws {
    for i in blocks.indices where footprint(i..<i + 1) > shardBudget {
      throw PartitionError(
        key: "cluster.device_memory",
        "block \"\(blockNames[i])\" needs \(formatBytes(footprint(i..<i + 1))) at batch size \(batchSize), "
          + "more than \(budgetText); raise cluster.device_memory or lower train.batch_size")
    }
  }

  /// "the device budget of 64.0 MiB", or the half of it that one shard gets with double buffering.
  public var budgetText: String {
    doubleBuffering && budget != .max
      ? "the shard budget of \(formatBytes(shardBudget)) (half of cluster.device_memory = \(formatBytes(budget)), for double buffering)"
      : "the device budget of \(formatBytes(budget))"
  }

  /// "h.2" or "h.2...h.5": the blocks of a range, for messages.
  public func names(_ range: Range<Int>) -> String {
    range.count == 1
      ? blockNames[range.lowerBound] : "\(blockNames[range.lowerBound])...\(blockNames[range.upperBound - 1])"
  }

  /// Throws for an option key not in `valid` (`[partitioner]` keys other than `name`).
  public func checkOptions(_ valid: [String], partitioner: String) throws {
    if let k = options.keys.filter({ !valid.contains($0) }).sorted().first {
      let allowed = valid.isEmpty ? "it takes no options" : "valid options: \(valid.sorted().joined(separator: ", "))"
      throw PartitionError(
        key: "partitioner.\(k)", "unknown option \"\(k)\" for partitioner \"\(partitioner)\"; \(allowed)")
    }
  }

}

/// A weight block `owner` owns and block `replica` uses a copy of; `bytes` of its value.
public struct TiedWeight: Sendable, Equatable {
  public var owner: Int
  public var replica: Int
  public var bytes: Int
  public init(owner: Int, replica: Int, bytes: Int) {
    self.owner = owner
    self.replica = replica
    self.bytes = bytes
  }
}

/// Chooses a model's shards: contiguous ranges of its blocks.
public protocol Partitioner: AnyObject {
  /// The name `[partitioner] name` selects.
  var name: String { get }
  /// Contiguous, non-empty ranges covering `0..<request.blocks.count` once, in order, each with
  /// `request.footprint(range) <= request.shardBudget`. Throws `PartitionError` for bad options or a
  /// budget that cannot be met.
  func partition(_ request: PartitionRequest) throws -> [Range<Int>]
}

/// Bad `[partitioner]` options or a budget that cannot be met. `key` is the job-file key it is about
/// (`cluster.device_memory`, `partitioner.boundaries`); the runtime adds the file and line.
public struct PartitionError: Error, CustomStringConvertible, Sendable, Equatable {
  public var key: String
  public var message: String
  public init(key: String, _ message: String) {
    self.key = key
    self.message = message
  }
  public var description: String { message }
}

/// Whether `shards` are non-empty contiguous ranges covering `0..<blockCount` once, in order.
public func validatePartition(_ shards: [Range<Int>], blockCount: Int) -> Bool {
  var next = 0
  for s in shards {
    guard s.lowerBound == next, !s.isEmpty else { return false }
    next = s.upperBound
  }
  return next == blockCount
}

/// Sums and products of byte counts that saturate at `Int.max` instead of overflowing: sizes from
/// a job file are only compared against budgets, and a saturated one fails that comparison.
public func saturatingSum(_ a: Int, _ b: Int) -> Int {
  let (s, overflow) = a.addingReportingOverflow(b)
  return overflow ? .max : s
}

public func saturatingProduct(_ a: Int, _ b: Int) -> Int {
  let (p, overflow) = a.multipliedReportingOverflow(by: b)
  return overflow ? .max : p
}
