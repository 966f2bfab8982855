/// What a partitioner needs to know about a block, from its shapes alone. The byte counts are
/// exactly what the block allocates (tested against a device's measured peak), so that a shard's
/// planned footprint is what the runtime reaches.
public struct BlockCosts: Sendable, Equatable {
  /// Bytes of the parameters the block owns (gradients take as many again, optimizer state
  /// `stateCopies` times as many).
  public var parameterBytes: Int
  /// Bytes of replicas of another block's parameters (the `gpt` head's copy of the token
  /// embedding): a value and a gradient, no optimizer state.
  public var replicaBytes: Int
  /// Bytes per sample of what the forward keeps for the backward, its output included (and, for a
  /// loss block, the loss gradient, written over the logits).
  public var activationBytesPerSample: Int
  /// Bytes per sample of the backward's scratch, by role. The blocks of one shard share one
  /// workspace: a role's buffer is as large as the largest block's need and reused by every block.
  /// The role "dx" (the gradient a block returns) alternates between two buffers, "dx0" and "dx1",
  /// by the block's index in the model, since a backward reads the next block's while it writes its
  /// own.
  public var workspace: [String: Int]
  /// The roles of `workspace` the forward uses too (and their bytes per sample); freed when the
  /// forward's task ends.
  public var forwardWorkspace: [String: Int]
  /// Multiply-adds x 2 of one forward pass, per sample. A backward costs about twice as much.
  public var forwardFlopsPerSample: Int

  public init(
    parameterBytes: Int, replicaBytes: Int = 0, activationBytesPerSample: Int, workspaceBytesPerSample: Int = 0,
    forwardWorkspace: [String: Int] = [:], workspace: [String: Int]? = nil, forwardFlopsPerSample: Int
  ) {
    self.forwardWorkspace = forwardWorkspace
    self.parameterBytes = parameterBytes
    self.replicaBytes = replicaBytes
    self.activationBytesPerSample = activationBytesPerSample
    self.workspace = workspace ?? (workspaceBytesPerSample > 0 ? ["scratch": workspaceBytesPerSample] : [:])
    self.forwardFlopsPerSample = forwardFlopsPerSample
  }

  /// Bytes per sample of this block's scratch alone (every role).
  public var workspaceBytesPerSample: Int { workspace.values.reduce(0, +) }

  /// Parameters + gradients + optimizer state (`stateCopies` tensors the size of the owned
  /// parameters), and a replica's value and gradient.
  public func stateBytes(stateCopies: Int) -> Int { parameterBytes * (2 + stateCopies) + 2 * replicaBytes }
}

/// The one estimate of a shard task's time where nothing was measured: FLOPs at a rate, a backward
/// costing twice its forward. The partitioner's balance, the placement of homes under `mpi`, the
/// coordinator's first remaining-time estimates and `hydra-mpi plan` all use it.
public enum TaskCost {
  /// A backward costs this many forwards (two products per forward one).
  public static let backwardPerForward = 2.0

  /// Seconds of the forward of `blocks` over `batchSize` samples at `flopsPerSecond` (1: FLOPs).
  public static func forwardSeconds(
    _ blocks: some Sequence<BlockCosts>, batchSize: Int, flopsPerSecond: Double = 1
  ) -> Double {
    blocks.reduce(0.0) { $0 + Double($1.forwardFlopsPerSample) } * Double(batchSize) / flopsPerSecond
  }

  /// Seconds of a forward and its backward.
  public static func stepSeconds(_ blocks: some Sequence<BlockCosts>, batchSize: Int, flopsPerSecond: Double = 1)
    -> Double
  {
    forwardSeconds(blocks, batchSize: batchSize, flopsPerSecond: flopsPerSecond) * (1 + backwardPerForward)
  }
}
