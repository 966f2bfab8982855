import HydraConfig
import HydraCore

extension ModelSpec {
  /// What one model holds on a device between its shard tasks at batch size `batch`: its boundary
  /// tensors (a shard's output and that output's gradient, at most one pair per block) and, when
  /// activations are not recomputed, every block's kept activations.
  public func bytesHeldBetweenTasks(batch: Int) -> (boundaries: Int, kept: Int) {
    let n = blockCount
    let kept = (0..<n).reduce(0) { $0 + blockCosts($1).activationBytesPerSample } * batch
    let boundaries = (0..<max(n - 1, 0)).reduce(0) { $0 + 2 * outputBytesPerSample($1) } * batch
    return (boundaries, kept)
  }

  /// The partitioner's question for this model: its blocks' costs and a shard budget of `budget`
  /// less `reserved` (what stays on the device between tasks). A running shard is sized with all
  /// its activations: a checkpointed shard recomputes them all in its backward.
  public func partitionRequest(
    batch: Int, stateCopies: Int, budget: Int, reserved: Int, doubleBuffering: Bool,
    blockSeconds: [Double]? = nil, options: [String: ConfigValue] = [:]
  ) -> PartitionRequest {
    let n = blockCount
    return PartitionRequest(
      blocks: (0..<n).map(blockCosts), blockNames: (0..<n).map(blockName), batchSize: batch,
      stateCopies: stateCopies, budget: budget == .max ? .max : max(0, budget - reserved),
      doubleBuffering: doubleBuffering, activationCheckpointing: false, blockSeconds: blockSeconds,
      inputBytesPerSample: (0..<n).map { $0 == 0 ? 0 : outputBytesPerSample($0 - 1) }, options: options)
  }
}
