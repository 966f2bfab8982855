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
    // 1..<3 (the last shard) keeping activations: state 4 x (20 + 30) = 200. Per sample, its forward
    // holds input (b0's act) 4 + acts 5 + 6 = 15; its backward also one workspace shared by both
    // blocks, max(7, 2) = 7, and the gradient it sends back (input-sized) 4: 26, x 8 = 208. 408.
    XCTAssertEqual(keep.workingSet(1..<3), 208)
    XCTAssertEqual(keep.footprint(1..<3), 408)
    // 0..<3: state 4 x 60 = 240; no input (the batch), acts 15, workspace 7: 22 -> 176. 416.
    XCTAssertEqual(keep.footprint(0..<3), 416)
    // 0..<1: state 40; forward acts 4 + its output posted (b0's act) 4 = 8, backward acts 4 +
    // workspace 3 + the gradient received (output-sized) 4 = 11 -> 88. 128.
    XCTAssertEqual(keep.footprint(0..<1), 40 + 8 * 11)
    XCTAssertEqual(keep.footprint(2..<2), 0)
    // Checkpointing changes nothing on the device (a recomputed forward allocates what the forward
    // did): it saves the host store the kept activations between the two tasks.
    XCTAssertEqual(request(three, ckpt: true).footprint(1..<3), 408)
    XCTAssertEqual(request(three, ckpt: true).footprint(0..<2), request(three).footprint(0..<2))
    // Exact input sizes instead of the previous block's activations: 200 + 8 x (2 + 11 + 7 + 2) = 376.
    let exact = PartitionRequest(blocks: three, batchSize: 8, stateCopies: 2, inputBytesPerSample: [0, 2, 3])
    XCTAssertEqual(exact.footprint(1..<3), 376)
    // sgd: state = 3 x parameters: 150 + 208 = 358.
    XCTAssertEqual(request(three, copies: 1).footprint(1..<3), 358)

    XCTAssertEqual(request(three, budget: 700).shardBudget, 700)
    XCTAssertEqual(request(three, budget: 701, db: true).shardBudget, 350)
    XCTAssertEqual(request(three, db: true).shardBudget, .max)
    XCTAssertEqual(request([costs(1, act: .max / 4)]).footprint(0..<1), .max)  // saturates, x 8 overflows
  }

  func testWorkspaceRolesTiesAndRecomputeByHand() {
    // Two blocks whose backwards return a gradient ("dx": the two alternate buffers) and share a
    // "wide" buffer; the first also uses "wide" in its forward. Batch 1, sgd.
    let blocks = [
      BlockCosts(
        parameterBytes: 10, activationBytesPerSample: 4, forwardWorkspace: ["wide": 9],
        workspace: ["wide": 9, "dx": 2], forwardFlopsPerSample: 1),
      BlockCosts(
        parameterBytes: 10, activationBytesPerSample: 4, workspace: ["wide": 5, "dx": 3], forwardFlopsPerSample: 1),
      BlockCosts(parameterBytes: 10, activationBytesPerSample: 4, forwardFlopsPerSample: 1),
    ]
    let r = PartitionRequest(blocks: blocks, batchSize: 1, stateCopies: 1, inputBytesPerSample: [0, 1, 1])
    // 0..<2: forward acts 8 + wide 9 + output 1 = 18; backward acts 8 + wide max(9, 5) + dx0 2 + dx1 3
    // + incoming gradient 1 = 23. State 3 x 20 = 60.
    XCTAssertEqual(r.workingSet(0..<2), 23)
    XCTAssertEqual(r.footprint(0..<2), 83)
    // A weight block 0 owns and block 2 replicates (100 bytes): one copy in a task of either shard.
    var tied = r
    tied.ties = [TiedWeight(owner: 0, replica: 2, bytes: 100)]
    XCTAssertEqual(tied.workingSet(0..<2), 123)
    XCTAssertEqual(tied.workingSet(2..<3), r.workingSet(2..<3) + 100)
    XCTAssertEqual(tied.workingSet(0..<3), r.workingSet(0..<3) + 100)
    XCTAssertEqual(tied.workingSet(1..<2), r.workingSet(1..<2))
    // Recomputing block 1 alone (not the last shard) adds nothing: it has no forward workspace.
    var recompute = r
    recompute.activationCheckpointing = true
    XCTAssertEqual(recompute.workingSet(1..<2), r.workingSet(1..<2))
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
    // Double buffering halves it to 350: 0..<2 needs 120 + 8 x (9 + 7 + 5) = 288, 0..<3 416 -> cut.
    XCTAssertEqual(try greedy.partition(request(three, budget: 700, db: true)), [0..<2, 2..<3])
    // 0..<3 needs 416: with 832 (416 per shard) -> one shard again, 831 -> two.
    XCTAssertEqual(try greedy.partition(request(three, budget: 832, db: true, ckpt: true)), [0..<3])
    XCTAssertEqual(try greedy.partition(request(three, budget: 831, db: true, ckpt: true)), [0..<2, 2..<3])
    // Balanced, 2 shards, times 3 x flops x 8 = 24, 48, 72: 0..<1 | 1..<3 = max(24, 120) = 120,
    // 0..<2 | 2..<3 = max(72, 72) = 72; 1..<3 needs 408 > 350 anyway.
    XCTAssertEqual(try balanced.partition(request(three, budget: 700, db: true)), [0..<2, 2..<3])
  }

  func testGreedyAndBalancedByHand() throws {
    // Five equal-memory blocks: p 100, act 10, ws 0, sgd (state 300), batch 2, budget 1000.
    // A shard of k blocks: 300k + 2 x (10k acts + 10 input unless first + 10 output gradient unless
    // last + 10 input gradient unless first): 0..<3 980, 2..<5 1000, 1..<4 1020, 4 blocks > 1200.
    // At most 3 blocks per shard. Greedy: [0..<3, 3..<5], 2 shards.
    // Times 3 x flops x 2 with flops [4, 1, 1, 1, 1] = [24, 6, 6, 6, 6].
    // Greedy: max(24 + 6 + 6, 6 + 6) = 36. Two shards of <= 3 blocks: cut at 2: max(30, 18) = 30;
    // cut at 3: 36. Balanced: [0..<2, 2..<5].
    let heavyFirst = [4, 1, 1, 1, 1].map { costs(100, act: 10, flops: $0) }
    let r = request(heavyFirst, budget: 1000, batch: 2, copies: 1)
    XCTAssertEqual(r.footprint(0..<3), 980)
    XCTAssertEqual(r.footprint(2..<5), 1000)
    XCTAssertEqual(r.footprint(1..<4), 1020)
    XCTAssertEqual(try MemoryGreedyPartitioner().partition(r), [0..<3, 3..<5])
    XCTAssertEqual(try BalancedPartitioner().partition(r), [0..<2, 2..<5])
    // A budget of exactly 980: 0..<3 still fits (<=), but 2..<5 (1000) does not, so balanced must cut
    // at 3 like greedy, memory before time.
    let tight = request(heavyFirst, budget: 980, batch: 2, copies: 1)
    XCTAssertEqual(try MemoryGreedyPartitioner().partition(tight), [0..<3, 3..<5])
    XCTAssertEqual(try BalancedPartitioner().partition(tight), [0..<3, 3..<5])
    XCTAssertEqual(
      try MemoryGreedyPartitioner().partition(request(heavyFirst, budget: 979, batch: 2, copies: 1)),
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
    // Shards of 3 need 980 / 1000, within 1000.
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
