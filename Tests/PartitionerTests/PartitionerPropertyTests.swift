import HydraCore
import HydraPartitioners
import HydraRuntime
import XCTest

/// Properties on random block costs: every shard fits, shards cover every block once in order,
/// `balanced` uses as few shards as `memory-greedy` and is never slower, and it is the brute-force
/// optimum (earliest boundaries among ties) where all cuts can be enumerated.
final class PartitionerPropertyTests: XCTestCase {
  /// A random request: n blocks with costs spread over two orders of magnitude, a budget between the
  /// largest single block and the whole model, random modes; times sometimes measured, sometimes as
  /// small integers so that ties happen.
  func randomRequest(_ g: inout SplitMix64, maxBlocks: Int) -> PartitionRequest {
    let n = 1 + g.nextInt(below: maxBlocks)
    let blocks = (0..<n).map { _ in
      costs(
        1 + g.nextInt(below: 10_000), act: g.nextInt(below: 2_000), ws: g.nextInt(below: 1_000),
        flops: 1 + g.nextInt(below: 50))
    }
    var r = PartitionRequest(
      blocks: blocks, blockNames: (0..<n).map { "b\($0)" }, batchSize: 1 + g.nextInt(below: 8),
      stateCopies: g.nextInt(below: 3), doubleBuffering: g.nextInt(below: 2) == 1,
      activationCheckpointing: g.nextInt(below: 2) == 1)
    switch g.nextInt(below: 3) {
    case 0: r.blockSeconds = (0..<n).map { _ in g.nextUnit() }
    case 1: r.blockSeconds = (0..<n).map { _ in Double(g.nextInt(below: 4)) }
    default: break
    }
    let largest = blocks.indices.map { r.footprint($0..<$0 + 1) }.max()!
    let whole = r.footprint(0..<n)
    let shardBudget = largest + g.nextInt(below: max(1, whole - largest + 1))
    r.budget = r.doubleBuffering ? 2 * shardBudget + g.nextInt(below: 2) : shardBudget
    precondition(r.shardBudget == shardBudget)
    return r
  }

  func maxSeconds(_ shards: [Range<Int>], _ r: PartitionRequest) -> Double {
    shards.map { r.seconds($0) }.max() ?? 0
  }

  func testRandomCosts() throws {
    var g = SplitMix64(seed: 2021)
    let greedy = MemoryGreedyPartitioner(), balanced = BalancedPartitioner()
    var strictlyBetter = 0, multiShard = 0
    for _ in 0..<400 {
      let r = randomRequest(&g, maxBlocks: 30)
      let n = r.blocks.count
      let a = try greedy.partition(r), b = try balanced.partition(r)
      for shards in [a, b] {
        XCTAssertTrue(validatePartition(shards, blockCount: n), "\(shards) for \(n) blocks")
        for s in shards { XCTAssertLessThanOrEqual(r.footprint(s), r.shardBudget, "\(s) of \(shards)") }
      }
      // Greedy is maximal: each shard but the last would overflow with the next block.
      for s in a.dropLast() { XCTAssertGreaterThan(r.footprint(s.lowerBound..<s.upperBound + 1), r.shardBudget) }
      XCTAssertEqual(b.count, a.count)
      XCTAssertLessThanOrEqual(maxSeconds(b, r), maxSeconds(a, r))
      if maxSeconds(b, r) < maxSeconds(a, r) { strictlyBetter += 1 }
      if a.count > 1 { multiShard += 1 }
      // Unlimited memory: one shard.
      var unlimited = r
      unlimited.budget = .max
      XCTAssertEqual(try balanced.partition(unlimited), [0..<n])
      XCTAssertEqual(try greedy.partition(unlimited), [0..<n])
    }
    // The generator must exercise the interesting cases, not only single shards.
    XCTAssertGreaterThan(multiShard, 200)
    XCTAssertGreaterThan(strictlyBetter, 50)
  }

  func testBalancedIsTheBruteForceOptimum() throws {
    var g = SplitMix64(seed: 7)
    let greedy = MemoryGreedyPartitioner(), balanced = BalancedPartitioner()
    for _ in 0..<300 {
      let r = randomRequest(&g, maxBlocks: 10)
      let n = r.blocks.count
      // All 2^(n-1) cuts, in lexicographic order of their boundary lists (so the first optimum found
      // has the earliest boundaries): the fewest shards that fit, then the smallest max time.
      var all: [[Range<Int>]] = []
      func cuts(_ start: Int, _ shards: [Range<Int>]) {
        if start == n { all.append(shards); return }
        for end in start + 1...n { cuts(end, shards + [start..<end]) }
      }
      cuts(0, [])
      // Partitioners grow a shard block by block and stop at the first block that does not fit (a
      // footprint need not grow with every block: a shard's output may be smaller than the block
      // before it), so a shard is admissible when it and every shorter shard from its start fit.
      func admissible(_ s: Range<Int>) -> Bool {
        (s.lowerBound + 1...s.upperBound).allSatisfy { r.footprint(s.lowerBound..<$0) <= r.shardBudget }
      }
      let fitting = all.filter { $0.allSatisfy(admissible) }
      let fewest = fitting.map(\.count).min()!
      XCTAssertEqual(try greedy.partition(r).count, fewest)
      var best: [Range<Int>]? = nil
      for shards in fitting where shards.count == fewest {
        if best == nil || maxSeconds(shards, r) < maxSeconds(best!, r) { best = shards }
      }
      XCTAssertEqual(try balanced.partition(r), best!, "n \(n), budget \(r.shardBudget)")
    }
  }

  func testFixedShardsAreWhatWasAsked() throws {
    var g = SplitMix64(seed: 99)
    for _ in 0..<200 {
      var r = randomRequest(&g, maxBlocks: 30)
      r.budget = .max
      let n = r.blocks.count
      let per = 1 + g.nextInt(below: n)
      r.options = ["blocks_per_shard": .int(per)]
      let shards = try FixedPartitioner().partition(r)
      XCTAssertTrue(validatePartition(shards, blockCount: n))
      XCTAssertEqual(shards.count, (n + per - 1) / per)
      XCTAssertTrue(shards.dropLast().allSatisfy { $0.count == per })
      let starts = (1..<n).filter { _ in g.nextInt(below: 3) == 0 }
      r.options = ["boundaries": .array(starts.map { .int($0) })]
      XCTAssertEqual(try FixedPartitioner().partition(r).map(\.lowerBound), [0] + starts)
    }
  }
}
