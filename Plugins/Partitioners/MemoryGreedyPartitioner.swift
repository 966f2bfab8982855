import HydraCore
import HydraRuntime

/// Hydra's partitioner: walk the blocks in order and start a new shard when the next block would
/// take the current one past the shard budget. It takes no options.
///
/// A shard's footprint only grows as blocks are added at either end (a block's input is part of the
/// previous block's activations), so this gives the fewest shards that fit.
public final class MemoryGreedyPartitioner: Partitioner {
  public let name = "memory-greedy"
  public init() {}

  public func partition(_ request: PartitionRequest) throws -> [Range<Int>] {
    try request.checkOptions([], partitioner: name)
    try request.checkBlocksFit()
    let n = request.blocks.count
    var shards: [Range<Int>] = []
    var start = 0
    for next in 0..<n where next > start && request.footprint(start..<next + 1) > request.shardBudget {
      shards.append(start..<next)
      start = next
    }
    if start < n { shards.append(start..<n) }
    return shards
  }
}
