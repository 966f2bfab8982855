import HydraPluginAPI

/// The fewest shards that fit the budget (as many as `memory-greedy` makes) and, among all ways to cut
/// the blocks into that many contiguous shards that fit, the one whose slowest shard is fastest:
/// balanced shards leave fewer holes in a schedule. Time is the request's per-block seconds (a
/// measured profile, or the FLOPs proxy). Ties go to the earliest boundaries. It takes no options.
///
/// Dynamic programming over suffixes: `best[k][i]` is the smallest largest-shard time of blocks
/// `i..<n` cut into `k` shards that fit. O(K n^2) time, O(n^2) memory for the shard times.
public final class BalancedPartitioner: Partitioner {
  public let name = "balanced"
  public init() {}

  public func partition(_ request: PartitionRequest) throws -> [Range<Int>] {
    try request.checkOptions([], partitioner: name)
    try request.checkBlocksFit()
    let n = request.blocks.count
    guard n > 0 else { return [] }

    // For each start i: the shards i..<e grown block by block until one does not fit (as
    // `memory-greedy` grows them): e in i+1...lastEnd[i], and their times, summed left to right like
    // `request.seconds`.
    var lastEnd = [Int](repeating: 0, count: n)
    var time = [[Double]](repeating: [], count: n)  // time[i][e - i - 1] = seconds(i..<e)
    for i in 0..<n {
      var sum = request.blockSeconds(i)
      time[i].append(sum)
      var e = i + 1
      while e < n, request.footprint(i..<e + 1) <= request.shardBudget {
        sum += request.blockSeconds(e)
        time[i].append(sum)
        e += 1
      }
      lastEnd[i] = e
    }
    func seconds(_ i: Int, _ e: Int) -> Double { time[i][e - i - 1] }

    // Fewest shards: the greedy count (every block fits alone, so it exists).
    var count = 0
    var at = 0
    while at < n {
      at = lastEnd[at]
      count += 1
    }

    // best[k][i] for k = 0...count; .infinity where blocks i..<n cannot be cut into k shards that fit.
    var best = [[Double]](repeating: [Double](repeating: .infinity, count: n + 1), count: count + 1)
    best[0][n] = 0
    for k in 1...count {
      for i in 0..<n {
        var b = Double.infinity
        for e in (i + 1)...lastEnd[i] where best[k - 1][e] < .infinity {
          b = min(b, max(seconds(i, e), best[k - 1][e]))
        }
        best[k][i] = b
      }
    }
    let target = best[count][0]
    precondition(target < .infinity, "balanced: the greedy shard count must be reachable")

    // Walk forward, each shard taking the earliest end that keeps the optimum reachable.
    var shards: [Range<Int>] = []
    var start = 0
    for k in stride(from: count, to: 0, by: -1) {
      guard
        let end = ((start + 1)...lastEnd[start]).first(where: { max(seconds(start, $0), best[k - 1][$0]) <= target })
      else { preconditionFailure("balanced: no shard end reaches the optimum") }
      shards.append(start..<end)
      start = end
    }
    return shards
  }
}
