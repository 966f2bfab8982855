/// Where each shard's state lives when training starts under a distributed backend (`mpi`), where
/// every device is a process with its own memory: its home device, which runs all its tasks unless
/// the scheduler moves it.
public enum Placement {
  /// Longest processing time first: items (whole models, or single shards with `byShard`) from the
  /// most work to the least, each to the device with the least work so far (ties: the fewest bytes
  /// of state, then the lowest index). `work[m][s]` is shard s of model m's estimated seconds over
  /// the whole job, `bytes[m][s]` its state. Returns `[model][shard]` device indices.
  ///
  /// By model (the default), a model's chain never crosses devices, so its activations never leave
  /// the process; by shard, a large model's state spreads over several devices' memory.
  public static func homes(work: [[Double]], bytes: [[Int]], devices: Int, byShard: Bool) -> [[Int]] {
    precondition(devices >= 1 && work.count == bytes.count)
    struct Item {
      var model: Int
      var shards: [Int]
      var work: Double
      var bytes: Int
    }
    var items: [Item] = []
    for m in work.indices {
      if byShard {
        for s in work[m].indices { items.append(Item(model: m, shards: [s], work: work[m][s], bytes: bytes[m][s])) }
      } else {
        items.append(
          Item(model: m, shards: Array(work[m].indices), work: work[m].reduce(0, +), bytes: bytes[m].reduce(0, +)))
      }
    }
    items.sort { a, b in
      if a.work != b.work { return a.work > b.work }
      if a.bytes != b.bytes { return a.bytes > b.bytes }
      return (a.model, a.shards[0]) < (b.model, b.shards[0])
    }
    var load = [Double](repeating: 0, count: devices)
    var held = [Int](repeating: 0, count: devices)
    var homes = work.map { [Int](repeating: 0, count: $0.count) }
    for item in items {
      let d = (0..<devices).min { a, b in
        if load[a] != load[b] { return load[a] < load[b] }
        if held[a] != held[b] { return held[a] < held[b] }
        return a < b
      }!
      load[d] += item.work
      held[d] += item.bytes
      for s in item.shards { homes[item.model][s] = d }
    }
    return homes
  }
}
