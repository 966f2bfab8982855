import HydraPluginAPI

/// Shards the user chose: `blocks_per_shard = N` (consecutive runs of N blocks, the last one possibly
/// shorter), or `boundaries = [b1, b2, ...]`, the strictly increasing indices of the blocks where a
/// new shard starts (each in 1..<block count; `[]` = one shard). Exactly one of the two. A shard that
/// does not fit the budget is an error naming it; nothing is moved to make it fit.
public final class FixedPartitioner: Partitioner {
  public let name = "fixed"
  public static let optionKeys = ["blocks_per_shard", "boundaries"]
  public init() {}

  public func partition(_ request: PartitionRequest) throws -> [Range<Int>] {
    try request.checkOptions(Self.optionKeys, partitioner: name)
    let n = request.blocks.count
    let starts: [Int]
    switch (request.options["blocks_per_shard"], request.options["boundaries"]) {
    case (.some, .some):
      throw PartitionError(
        key: "partitioner.boundaries",
        "partitioner \"fixed\" takes blocks_per_shard or boundaries, not both")
    case (nil, nil):
      throw PartitionError(
        key: "partitioner",
        "partitioner \"fixed\" needs blocks_per_shard = N or boundaries = [b1, b2, ...] (the blocks where shards start)"
      )
    case (.some(let value), nil):
      guard case .int(let per) = value else {
        throw PartitionError(
          key: "partitioner.blocks_per_shard", "partitioner.blocks_per_shard must be an integer, found \(value)")
      }
      guard per >= 1 else {
        throw PartitionError(
          key: "partitioner.blocks_per_shard", "partitioner.blocks_per_shard must be >= 1, found \(per)")
      }
      starts = Array(stride(from: 0, to: n, by: per))
    case (nil, .some(let value)):
      starts = n == 0 ? [] : [0] + (try boundaries(value, blockCount: n, names: request.blockNames))
    }

    let shards = starts.indices.map { k in starts[k]..<(k + 1 < starts.count ? starts[k + 1] : n) }
    try request.checkBlocksFit()
    for (k, shard) in shards.enumerated() where request.footprint(shard) > request.shardBudget {
      throw PartitionError(
        key: "cluster.device_memory",
        "fixed shard \(k) (blocks \(request.names(shard))) needs \(formatBytes(request.footprint(shard))) "
          + "at batch size \(request.batchSize), more than \(request.budgetText); "
          + "choose smaller shards or raise cluster.device_memory")
    }
    return shards
  }

  /// The checked `boundaries` list: integers, each in 1..<blockCount, strictly increasing.
  private func boundaries(_ value: ConfigValue, blockCount n: Int, names: [String]) throws -> [Int] {
    let key = "partitioner.boundaries"
    let shape = "a list of the block indices where shards start, strictly increasing, each in 1..<\(n)"
    guard case .array(let items) = value else {
      throw PartitionError(key: key, "\(key) must be \(shape); found \(value)")
    }
    var result: [Int] = []
    for item in items {
      guard case .int(let b) = item else {
        throw PartitionError(key: key, "\(key) must be \(shape); found \(item)")
      }
      guard b >= 1, b < n else {
        let why = b == 0 ? "block 0 always starts the first shard" : "the model has \(n) blocks (0..<\(n))"
        throw PartitionError(key: key, "\(key): boundary \(b) is out of range 1..<\(n): \(why)")
      }
      if let last = result.last, b <= last {
        throw PartitionError(
          key: key,
          "\(key): \(b) after \(last) skips or repeats blocks; boundaries must be strictly increasing "
            + "(block \(b) is \"\(names[b])\")")
      }
      result.append(b)
    }
    return result
  }
}
