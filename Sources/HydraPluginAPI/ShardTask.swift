public enum Direction: String, Sendable { case forward, backward }

/// What a scheduler hands a device: one shard's forward or backward of one model's step.
public struct ShardTask: Sendable, Equatable, CustomStringConvertible {
  public var model: Int
  public var shard: Int
  public var direction: Direction
  public var step: Int
  public init(model: Int, shard: Int, direction: Direction, step: Int) {
    self.model = model
    self.shard = shard
    self.direction = direction
    self.step = step
  }
  public var description: String { "m\(model) s\(shard) \(direction == .forward ? "fwd" : "bwd") @\(step)" }
}

/// The order of one model's step: forward through shards 0 ..< k, then backward through k-1 ... 0.
/// A task's place in it is its **position**, 0 ..< 2k. The one place that turns positions into
/// tasks and back, for the model itself, the coordinator, the simulator and schedulers.
public struct StepChain: Sendable, Equatable {
  /// Shards of the model (k >= 1).
  public let shards: Int
  public init(shards: Int) {
    precondition(shards >= 1, "a chain has at least one shard")
    self.shards = shards
  }

  /// Tasks in one step: 2k.
  public var length: Int { 2 * shards }

  /// The task at `position` (0 ..< 2k) of `step` of `model`.
  public func task(at position: Int, model: Int, step: Int) -> ShardTask {
    precondition(position >= 0 && position < length, "position \(position) outside a chain of \(length)")
    return position < shards
      ? ShardTask(model: model, shard: position, direction: .forward, step: step)
      : ShardTask(model: model, shard: length - 1 - position, direction: .backward, step: step)
  }

  /// Where `task` stands in its step.
  public func position(of task: ShardTask) -> Int {
    task.direction == .forward ? task.shard : length - 1 - task.shard
  }

  /// The task after `task` within the same step; nil after the last backward (the step is over).
  public func next(after task: ShardTask) -> ShardTask? {
    let p = position(of: task) + 1
    return p < length ? self.task(at: p, model: task.model, step: task.step) : nil
  }

  /// Whether `task` ends its step (the backward of shard 0).
  public func endsStep(_ task: ShardTask) -> Bool { task.direction == .backward && task.shard == 0 }

  /// Whether `task` computes the loss (the forward of the last shard).
  public func computesLoss(_ task: ShardTask) -> Bool { task.direction == .forward && task.shard == shards - 1 }

  /// Seconds of the tasks from `position` to the end of the step (that one included), given each
  /// shard's forward and backward seconds.
  public func seconds(from position: Int, forward: [Double], backward: [Double]) -> Double {
    precondition(forward.count == shards && backward.count == shards, "one forward and one backward time a shard")
    var total = 0.0
    for p in max(position, 0)..<length {
      total += p < shards ? forward[p] : backward[length - 1 - p]
    }
    return total
  }
}
