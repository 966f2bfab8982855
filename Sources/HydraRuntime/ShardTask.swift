import HydraCore

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
