import HydraConfig
import HydraCore

extension ModelSpec {
  /// What one model keeps between its shard tasks at batch size `batch`, in the host store: its
  /// boundary tensors (a shard's output and that output's gradient, at most one pair per block),
  /// every block's kept activations (unless recomputed), and its tied weights in transit.
  public func bytesHeldBetweenTasks(batch: Int) -> (boundaries: Int, kept: Int) {
    let n = blockCount
    let kept = saturatingProduct(
      (0..<n).reduce(0) { saturatingSum($0, blockCosts($1).activationBytesPerSample) }, batch)
    let boundaries = saturatingProduct(
      (0..<max(n - 1, 0)).reduce(0) { saturatingSum($0, saturatingProduct(2, outputBytesPerSample($1))) }, batch)
    return (saturatingSum(boundaries, tiedWeights.reduce(0) { saturatingSum($0, $1.bytes) }), kept)
  }

  /// The weights one block owns and another replicates: the `gpt` token embedding, which the head
  /// uses as its output projection.
  public var tiedWeights: [TiedWeight] {
    guard case .gpt(let s) = self else { return [] }
    return [TiedWeight(owner: 0, replica: s.layers + 1, bytes: s.vocab * s.channels * MemoryLayout<Float>.stride)]
  }

  /// The partitioner's question for this model: its blocks' costs and the device budget.
  public func partitionRequest(
    batch: Int, stateCopies: Int, budget: Int, doubleBuffering: Bool, activationCheckpointing: Bool,
    blockSeconds: [Double]? = nil, options: [String: ConfigValue] = [:]
  ) -> PartitionRequest {
    let n = blockCount
    return PartitionRequest(
      blocks: (0..<n).map(blockCosts), blockNames: (0..<n).map(blockName), batchSize: batch,
      stateCopies: stateCopies, budget: budget, doubleBuffering: doubleBuffering,
      activationCheckpointing: activationCheckpointing, blockSeconds: blockSeconds,
      inputBytesPerSample: (0..<n).map { $0 == 0 ? 0 : outputBytesPerSample($0 - 1) }, ties: tiedWeights,
      options: options)
  }
}
