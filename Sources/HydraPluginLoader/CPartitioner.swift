import CHydraPlugin
import Foundation
import HydraRuntime

/// A partitioner of a plugin library as a `Partitioner`. The plugin sees each block's costs and
/// asks the host for a range's footprint (what the runtime allocates is not a sum over blocks:
/// workspaces are shared, activations cross shard boundaries), so that it can honour the budget.
final class CPartitioner: Partitioner {
  let name: String
  let file: String
  private let table: hydra_partitioner

  init(_ table: hydra_partitioner, name: String, file: String) {
    self.table = table
    self.name = name
    self.file = file
  }

  /// What the footprint and seconds callbacks read.
  private final class Host {
    let request: PartitionRequest
    init(_ request: PartitionRequest) { self.request = request }
    static func request(_ r: UnsafePointer<hydra_partition_request>?, _ first: Int64, _ end: Int64)
      -> PartitionRequest?
    {
      guard let host = r?.pointee.host else { return nil }
      let request = Unmanaged<Host>.fromOpaque(host).takeUnretainedValue().request
      guard first >= 0, first < end, end <= Int64(request.blocks.count) else { return nil }
      return request
    }
  }

  private static let footprint: @convention(c) (UnsafePointer<hydra_partition_request>?, Int64, Int64) -> Int64 = {
    r, first, end in
    guard let request = Host.request(r, first, end) else { return -1 }
    return Int64(request.footprint(Int(first)..<Int(end)))
  }

  private static let seconds: @convention(c) (UnsafePointer<hydra_partition_request>?, Int64, Int64) -> Double = {
    r, first, end in
    guard let request = Host.request(r, first, end) else { return -1 }
    return request.seconds(Int(first)..<Int(end))
  }

  func partition(_ request: PartitionRequest) throws -> [Range<Int>] {
    let n = request.blocks.count
    let host = Host(request)
    let names = request.blockNames.map { strdup($0) }
    defer { names.forEach { free($0) } }
    let blocks = request.blocks.indices.map { i in
      let b = request.blocks[i]
      return hydra_block(
        name: UnsafePointer(names[i]), parameter_bytes: Int64(b.parameterBytes), replica_bytes: Int64(b.replicaBytes),
        state_bytes: Int64(b.stateBytes(stateCopies: request.stateCopies)),
        activation_bytes_per_sample: Int64(b.activationBytesPerSample),
        forward_flops_per_sample: Int64(b.forwardFlopsPerSample), seconds: request.blockSeconds(i))
    }
    var ends = [Int64](repeating: 0, count: max(n, 1))
    var count: Int64 = -1
    var error = hydra_error()
    let code = withExtendedLifetime(host) {
      blocks.withUnsafeBufferPointer { blockBuffer in
        withCOptions(request.options) { options, optionCount in
          var r = hydra_partition_request(
            blocks: blockBuffer.baseAddress, block_count: Int64(n), batch_size: Int64(request.batchSize),
            state_copies: Int64(request.stateCopies), budget: Int64(request.budget),
            shard_budget: Int64(request.shardBudget), double_buffering: request.doubleBuffering ? 1 : 0,
            activation_checkpointing: request.activationCheckpointing ? 1 : 0, options: options,
            option_count: optionCount, footprint: CPartitioner.footprint, seconds: CPartitioner.seconds,
            host: Unmanaged.passUnretained(host).toOpaque())
          return table.partition!(table.context, &r, &ends, &count, &error)
        }
      }
    }
    if code == HYDRA_ERROR_INPUT {
      // Bad `[partitioner]` options or a budget it cannot meet: the user's input (exit 2, with the line).
      throw PartitionError(key: "partitioner.name", "partitioner \"\(name)\" (plugin \(file)): \(pluginMessage(error))")
    }
    guard code == HYDRA_OK else {
      throw PluginError(
        file: file, kind: "partitioner", name: name, "partition failed (code \(code)): \(pluginMessage(error))")
    }
    guard (1...Int64(max(n, 1))).contains(count) else {
      throw PluginError(file: file, kind: "partitioner", name: name, "returned \(count) shards for \(n) blocks")
    }
    var shards: [Range<Int>] = []
    var first: Int64 = 0
    for end in ends.prefix(Int(count)) {
      guard end > first, end <= Int64(n) else {
        throw PluginError(
          file: file, kind: "partitioner", name: name,
          "shard ends \(Array(ends.prefix(Int(count)))) are not ascending within 1...\(n)")
      }
      shards.append(Int(first)..<Int(end))
      first = end
    }
    guard first == Int64(n) else {
      throw PluginError(
        file: file, kind: "partitioner", name: name, "shards end at block \(first), but the model has \(n) blocks")
    }
    for s in shards where request.footprint(s) > request.shardBudget {
      throw PluginError(
        file: file, kind: "partitioner", name: name,
        "shard of blocks \(request.names(s)) needs \(formatBytes(request.footprint(s))), more than \(request.budgetText)"
      )
    }
    return shards
  }
}
