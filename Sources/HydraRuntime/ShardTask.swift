import HydraCore

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

/// Where shard tasks run: a kernels instance with its memory budget.
public final class Device: @unchecked Sendable {
  public let index: Int
  public let kernels: Kernels
  public init(index: Int, kernels: Kernels) {
    self.index = index
    self.kernels = kernels
  }
  /// The device's memory: shard states and the running task's working set (which its kernels
  /// charge), or the kernels' memory itself when it has no working set.
  public var memory: DeviceMemory { kernels.memory.parent ?? kernels.memory }
}

/// Makes the batches of a model: a pure function of (seed, step), so that any device can make the
/// batch it needs and a resumed run sees the same ones.
public protocol BatchSource: AnyObject {
  func trainBatch(step: Int, batchSize: Int, seed: UInt64, shuffle: Bool) -> Batch
  func validationBatches(batchSize: Int, limit: Int?) -> [Batch]
}
