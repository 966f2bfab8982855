import HydraConfig
import HydraCore
import HydraPartitioners
import HydraRuntime
import XCTest

/// A block with the given parameter, activation and workspace bytes (per sample) and forward FLOPs.
func costs(_ p: Int, act: Int, ws: Int = 0, flops: Int = 1) -> BlockCosts {
  BlockCosts(
    parameterBytes: p, activationBytesPerSample: act, workspaceBytesPerSample: ws, forwardFlopsPerSample: flops)
}

final class PartitionerTests: XCTestCase {
  // Three blocks, adamw (state = 4 x parameters), batch size 8:
  //   b0: p 10, act 4, ws 3    b1: p 20, act 5, ws 7    b2: p 30, act 6, ws 2
  let three = [
    costs(10, act: 4, ws: 3, flops: 1), costs(20, act: 5, ws: 7, flops: 2), costs(30, act: 6, ws: 2, flops: 3),
  ]

  func request(
    _ blocks: [BlockCosts], budget: Int = .max, db: Bool = false, ckpt: Bool = false, batch: Int = 8,
    copies: Int = 2, names: [String]? = nil, options: [String: ConfigValue] = [:]
  ) -> PartitionRequest {
    PartitionRequest(
      blocks: blocks, blockNames: names, batchSize: batch, stateCopies: copies, budget: budget,
      doubleBuffering: db, activationCheckpointing: ckpt, options: options)
  }

  func testFootprintByHand() {
    let keep = request(three)
    // 1..<3 keeping activations: state 4 x (20 + 30) = 200; per sample: input (b0's act) 4
    // + acts 5 + 6 + workspaces 7 + 2 = 24, x 8 = 192. Total 392.
    XCTAssertEqual(keep.footprint(1..<3), 392)
    // 0..<3: state 4 x 60 = 240; per sample: no input (the batch) + 4 + 5 + 6 + 3 + 7 + 2 = 27 -> 216. 456.
    XCTAssertEqual(keep.footprint(0..<3), 456)
    XCTAssertEqual(keep.footprint(0..<1), 40 + 8 * (0 + 4 + 3))  // 96
    XCTAssertEqual(keep.footprint(2..<2), 0)
    let recompute = request(three, ckpt: true)
    // 1..<3 checkpointed: 200 + 8 x (input 4 + largest act 6 + workspaces 9 = 19) = 352.
    XCTAssertEqual(recompute.footprint(1..<3), 352)
    // 0..<3 checkpointed: 240 + 8 x (0 + 6 + 12) = 384.
    XCTAssertEqual(recompute.footprint(0..<3), 384)
    // Exact input sizes instead of the previous block's activations: 200 + 8 x (2 + 11 + 9) = 376.
    let exact = PartitionRequest(blocks: three, batchSize: 8, stateCopies: 2, inputBytesPerSample: [0, 2, 3])
    XCTAssertEqual(exact.footprint(1..<3), 376)
    // sgd: state = 3 x parameters: 150 + 192 = 342.
    XCTAssertEqual(request(three, copies: 1).footprint(1..<3), 342)

    XCTAssertEqual(request(three, budget: 700).shardBudget, 700)
    XCTAssertEqual(request(three, budget: 701, db: true).shardBudget, 350)
    XCTAssertEqual(request(three, db: true).shardBudget, .max)
    XCTAssertEqual(request([costs(1, act: .max / 4)]).footprint(0..<1), .max)  // saturates, x 8 overflows
  }

  func testSeconds() {
    // The FLOPs proxy: 3 x forward FLOPs x batch size: 3 x (2 + 3) x 8 = 120.
    XCTAssertEqual(request(three).seconds(1..<3), 120)
    let measured = PartitionRequest(blocks: three, batchSize: 8, stateCopies: 2, blockSeconds: [0.5, 0.25, 2])
    XCTAssertEqual(measured.seconds(0..<2), 0.75)
    XCTAssertEqual(measured.seconds(0..<3), 2.75)
  }

  func testBudgetModesChangeTheShards() throws {
    let greedy = MemoryGreedyPartitioner(), balanced = BalancedPartitioner()
    // Budget 700, whole device: 0..<3 needs 416 -> one shard.
    XCTAssertEqual(try greedy.partition(request(three, budget: 700)), [0..<3])
    // Double buffering halves it to 350: 0..<2 needs 40 + 80 + 8 x (9 + 10) = 272, 0..<3 456 -> cut.
    XCTAssertEqual(try greedy.partition(request(three, budget: 700, db: true)), [0..<2, 2..<3])
    // Checkpointing: 0..<3 needs 384; with 768 (384 per shard) -> one shard again, 767 -> two.
    XCTAssertEqual(try greedy.partition(request(three, budget: 768, db: true, ckpt: true)), [0..<3])
    XCTAssertEqual(try greedy.partition(request(three, budget: 767, db: true, ckpt: true)), [0..<2, 2..<3])
    // Balanced, 2 shards, times 3 x flops x 8 = 24, 48, 72: 0..<1 | 1..<3 = max(24, 120) = 120,
    // 0..<2 | 2..<3 = max(72, 72) = 72; 1..<3 needs 392 > 350 anyway.
    XCTAssertEqual(try balanced.partition(request(three, budget: 700, db: true)), [0..<2, 2..<3])
  }

  func testGreedyAndBalancedByHand() throws {
    // Five equal-memory blocks: p 100, act 10, ws 0, sgd (state 300), batch 2, budget 1000.
    // footprint(0..<k) = 300k + 2 x 10k = 320k; footprint(l..<l+k), l > 0 = 320k + 2 x 10 (input).
    // At most 3 blocks per shard (960 / 980; 4 blocks: 1280). Greedy: [0..<3, 3..<5], 2 shards.
    // Times 3 x flops x 2 with flops [4, 1, 1, 1, 1] = [24, 6, 6, 6, 6].
    // Greedy: max(24 + 6 + 6, 6 + 6) = 36. Two shards of <= 3 blocks: cut at 2: max(30, 18) = 30;
    // cut at 3: 36. Balanced: [0..<2, 2..<5].
    let heavyFirst = [4, 1, 1, 1, 1].map { costs(100, act: 10, flops: $0) }
    let r = request(heavyFirst, budget: 1000, batch: 2, copies: 1)
    XCTAssertEqual(r.footprint(0..<3), 960)
    XCTAssertEqual(r.footprint(2..<5), 980)
    XCTAssertEqual(r.footprint(1..<5), 1300)
    XCTAssertEqual(try MemoryGreedyPartitioner().partition(r), [0..<3, 3..<5])
    XCTAssertEqual(try BalancedPartitioner().partition(r), [0..<2, 2..<5])
    // A budget of exactly 960: 0..<3 still fits (<=), but 2..<5 (980) does not, so balanced must cut
    // at 3 like greedy, memory before time.
    let tight = request(heavyFirst, budget: 960, batch: 2, copies: 1)
    XCTAssertEqual(try MemoryGreedyPartitioner().partition(tight), [0..<3, 3..<5])
    XCTAssertEqual(try BalancedPartitioner().partition(tight), [0..<3, 3..<5])
    XCTAssertEqual(
      try MemoryGreedyPartitioner().partition(request(heavyFirst, budget: 959, batch: 2, copies: 1)),
      [0..<2, 2..<4, 4..<5])

    // Equal times: cutting at 2 or 3 both give max 18; ties go to the earliest boundary.
    let equal = request([1, 1, 1, 1, 1].map { costs(100, act: 10, flops: $0) }, budget: 1000, batch: 2, copies: 1)
    XCTAssertEqual(try MemoryGreedyPartitioner().partition(equal), [0..<3, 3..<5])
    XCTAssertEqual(try BalancedPartitioner().partition(equal), [0..<2, 2..<5])

    // A measured profile overrides the FLOPs. Times [1, 1, 1, 2, 10]: cut at 2: max(2, 13) = 13;
    // cut at 3: max(3, 12) = 12 -> [0..<3, 3..<5].
    var profiled = equal
    profiled.blockSeconds = [1, 1, 1, 2, 10]
    XCTAssertEqual(try BalancedPartitioner().partition(profiled), [0..<3, 3..<5])

    // Unlimited memory: one shard; no blocks: no shards.
    XCTAssertEqual(try BalancedPartitioner().partition(request(heavyFirst)), [0..<5])
    XCTAssertEqual(try MemoryGreedyPartitioner().partition(request(heavyFirst)), [0..<5])
    XCTAssertEqual(try BalancedPartitioner().partition(request([])), [])
    XCTAssertEqual(try MemoryGreedyPartitioner().partition(request([])), [])
  }

  func testFixed() throws {
    let blocks = [1, 1, 1, 1, 1].map { costs(100, act: 10, flops: $0) }
    func fixed(_ options: [String: ConfigValue], budget: Int = .max) throws -> [Range<Int>] {
      try FixedPartitioner().partition(request(blocks, budget: budget, batch: 2, copies: 1, options: options))
    }
    XCTAssertEqual(try fixed(["blocks_per_shard": .int(2)]), [0..<2, 2..<4, 4..<5])
    XCTAssertEqual(try fixed(["blocks_per_shard": .int(5)]), [0..<5])
    XCTAssertEqual(try fixed(["blocks_per_shard": .int(9)]), [0..<5])
    XCTAssertEqual(try fixed(["blocks_per_shard": .int(1)]), [0..<1, 1..<2, 2..<3, 3..<4, 4..<5])
    XCTAssertEqual(try fixed(["boundaries": .array([.int(1), .int(3)])]), [0..<1, 1..<3, 3..<5])
    XCTAssertEqual(try fixed(["boundaries": .array([.int(4)])]), [0..<4, 4..<5])
    XCTAssertEqual(try fixed(["boundaries": .array([])]), [0..<5])
    // Shards of 3 need 960 / 980, within 1000.
    XCTAssertEqual(try fixed(["boundaries": .array([.int(2)])], budget: 1000), [0..<2, 2..<5])
  }

  func testValidatePartition() {
    XCTAssertTrue(validatePartition([0..<2, 2..<5], blockCount: 5))
    XCTAssertTrue(validatePartition([], blockCount: 0))
    XCTAssertFalse(validatePartition([0..<2, 3..<5], blockCount: 5))  // skips block 2
    XCTAssertFalse(validatePartition([0..<3, 2..<5], blockCount: 5))  // repeats block 2
    XCTAssertFalse(validatePartition([0..<2, 2..<2, 2..<5], blockCount: 5))  // empty shard
    XCTAssertFalse(validatePartition([0..<2, 2..<4], blockCount: 5))  // misses the last block
    XCTAssertFalse(validatePartition([2..<5, 0..<2], blockCount: 5))  // out of order
  }
}
