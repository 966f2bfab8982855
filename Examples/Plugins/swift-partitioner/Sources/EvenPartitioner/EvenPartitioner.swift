import CHydraPlugin

// "even": cuts a model into `shards` (an option, default 2) shards of equal numbers of blocks; when
// the blocks do not divide evenly, the first shards get one more (10 blocks, 3 shards: 4, 3, 3).
// More shards than blocks is the user's mistake, and so is a shard that does not fit the device:
// the partitioner asks the host for each shard's footprint and refuses rather than overrun it.
//
// The two entry points of hydra_plugin.h, exported under their C names with @_cdecl.

@_cdecl("hydra_plugin_abi_version")
public func hydraPluginABIVersion() -> UInt32 { UInt32(HYDRA_PLUGIN_ABI_VERSION) }

@_cdecl("hydra_plugin_register")
public func hydraPluginRegister(
  _ host: UnsafePointer<hydra_host>?, _ registrar: UnsafePointer<hydra_registrar>?,
  _ error: UnsafeMutablePointer<hydra_error>?
) -> Int32 {
  guard let host, let registrar, host.pointee.abi_version == UInt32(HYDRA_PLUGIN_ABI_VERSION) else {
    fail(error, "built for plugin ABI version \(HYDRA_PLUGIN_ABI_VERSION)")
    return HYDRA_ERROR
  }
  return "even".withCString { name in
    var table = hydra_partitioner(name: name, context: nil, partition: partitionEvenly)
    // The host copies the table and the name during this call.
    return registrar.pointee.add_partitioner(registrar.pointee.host, &table, error)
  }
}

/// Runs on the thread that plans the job; keeps no state.
private let partitionEvenly:
  @convention(c) (
    UnsafeMutableRawPointer?, UnsafePointer<hydra_partition_request>?, UnsafeMutablePointer<Int64>?,
    UnsafeMutablePointer<Int64>?, UnsafeMutablePointer<hydra_error>?
  ) -> Int32 = { _, request, ends, shardCount, error in
    guard let r = request?.pointee, let ends, let shardCount else { return HYDRA_ERROR }
    var shards: Int64 = 2
    for i in 0..<Int(r.option_count) {
      let key = String(cString: r.options[i].key), value = String(cString: r.options[i].value)
      guard key == "shards" else {
        fail(error, "unknown option \"\(key)\" for partitioner \"even\"; valid options: shards")
        return HYDRA_ERROR_INPUT
      }
      guard let n = Int64(value), n >= 1 else {
        fail(error, "partitioner.shards must be a whole number >= 1, found \(value)")
        return HYDRA_ERROR_INPUT
      }
      shards = n
    }
    let blocks = r.block_count
    guard shards <= blocks else {
      fail(error, "partitioner.shards = \(shards), but the model has only \(blocks) blocks")
      return HYDRA_ERROR_INPUT
    }
    var first: Int64 = 0
    for s in 0..<shards {
      let end = first + blocks / shards + (s < blocks % shards ? 1 : 0)
      let bytes = r.footprint(request, first, end)
      guard bytes >= 0, bytes <= r.shard_budget else {
        let name = String(cString: r.blocks[Int(first)].name)
        fail(
          error,
          "shard \(s) (from block \"\(name)\", \(end - first) blocks) needs \(bytes) bytes, more than the \(r.shard_budget) a shard may use; raise cluster.device_memory or partitioner.shards"
        )
        return HYDRA_ERROR_INPUT
      }
      ends[Int(s)] = end
      first = end
    }
    shardCount.pointee = shards
    return HYDRA_OK
  }

private func fail(_ error: UnsafeMutablePointer<hydra_error>?, _ text: String) {
  guard let error else { return }
  withUnsafeMutableBytes(of: &error.pointee.message) { raw in
    let bytes = Array(text.utf8.prefix(raw.count - 1))
    raw.copyBytes(from: bytes)
    raw[bytes.count] = 0
  }
}
