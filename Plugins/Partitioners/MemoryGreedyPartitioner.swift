import HydraPluginAPI

/// Hydra's partitioner: walk the blocks in order and start a new shard when the next block would
/// take the current one past the shard budget. It takes no options.
///
/// A shard grows block by block until the next block does not fit. Where footprints grow with
/// every block added (as in `gpt` and most `mlp`s) this gives the fewest shards that fit; a shard's
/// footprint can shrink when a block with a smaller output joins it, and such longer shards are not
/// looked for.
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
