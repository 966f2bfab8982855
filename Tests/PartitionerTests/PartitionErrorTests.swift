import HydraConfig
import HydraCore
import HydraPartitioners
import HydraRuntime
import XCTest

/// Bad input the partitioners report: the key it is about and a message naming what is wrong.
final class PartitionErrorTests: XCTestCase {
  let names = ["wte", "h.0", "h.1", "h.2", "head"]
  let mib = 1 << 20

  /// Five blocks of 64 KiB parameters; h.2 has 1 MiB. sgd: state = 3 x parameters.
  func request(budget: Int, db: Bool = false, options: [String: ConfigValue] = [:]) -> PartitionRequest {
    let blocks = (0..<5).map { i in
      costs(i == 3 ? mib : 64 << 10, act: 1024, ws: 512, flops: 100)
    }
    return PartitionRequest(
      blocks: blocks, blockNames: names, batchSize: 4, stateCopies: 1, budget: budget,
      doubleBuffering: db, options: options)
  }

  func error(_ p: Partitioner, _ r: PartitionRequest, file: StaticString = #filePath, line: UInt = #line)
    -> PartitionError?
  {
    do {
      let shards = try p.partition(r)
      XCTFail("expected an error, got \(shards)", file: file, line: line)
    } catch let e as PartitionError {
      return e
    } catch {
      XCTFail("expected a PartitionError, got \(error)", file: file, line: line)
    }
    return nil
  }

  func testBlockTooBig() throws {
    // h.2 alone: 3 MiB state + 4 x its backward (1024 input + 1024 kept + 512 scratch + 1024
    // incoming gradient + 1024 outgoing) = 3 MiB + 18432 B = "3.0 MiB" > 2 MiB.
    let r = request(budget: 2 * mib)
    XCTAssertEqual(r.footprint(3..<4), 3 * mib + 18432)
    for p: Partitioner in [MemoryGreedyPartitioner(), BalancedPartitioner(), FixedPartitioner()] {
      var q = r
      if p is FixedPartitioner { q.options = ["blocks_per_shard": .int(1)] }
      let e = try XCTUnwrap(error(p, q), p.name)
      XCTAssertEqual(e.key, "cluster.device_memory")
      XCTAssertTrue(e.message.contains("\"h.2\""), e.message)
      XCTAssertTrue(e.message.contains("3.0 MiB"), e.message)
      XCTAssertTrue(e.message.contains(formatBytes(r.footprint(3..<4))), e.message)
      XCTAssertTrue(e.message.contains("2.0 MiB"), e.message)
      XCTAssertFalse(e.message.contains("wte") || e.message.contains("h.1"), e.message)
    }
    // With double buffering a 4 MiB device leaves 2 MiB per shard: both sizes are named.
    let e = try XCTUnwrap(error(MemoryGreedyPartitioner(), request(budget: 4 * mib, db: true)))
    XCTAssertTrue(
      e.message.contains("\"h.2\"") && e.message.contains("2.0 MiB") && e.message.contains("4.0 MiB"), e.message)
    XCTAssertTrue(e.message.contains("double buffering"), e.message)
    // 4 MiB without double buffering holds the whole model (3 MiB + 4 x 192 KiB of state, and
    // 4 x (5 x 1024 kept + 512 scratch, one workspace for the shard) = 22 KiB).
    XCTAssertEqual(try MemoryGreedyPartitioner().partition(request(budget: 4 * mib)), [0..<5])
  }

  func testFixedBoundariesThatSkipOrRepeat() throws {
    let fixed = FixedPartitioner()
    for bad: [Int] in [[3, 2], [2, 2], [1, 4, 3]] {
      let e = try XCTUnwrap(error(fixed, request(budget: .max, options: ["boundaries": .array(bad.map { .int($0) })])))
      XCTAssertEqual(e.key, "partitioner.boundaries")
      XCTAssertTrue(e.message.contains("skips or repeats"), e.message)
    }
    for bad in [0, 5, -1] {
      let e = try XCTUnwrap(error(fixed, request(budget: .max, options: ["boundaries": .array([.int(bad)])])))
      XCTAssertEqual(e.key, "partitioner.boundaries")
      XCTAssertTrue(e.message.contains("boundary \(bad) is out of range 1..<5"), e.message)
    }
    for bad: ConfigValue in [.int(2), .array([.double(1.5)]), .array([.string("h.1")])] {
      let e = try XCTUnwrap(error(fixed, request(budget: .max, options: ["boundaries": bad])))
      XCTAssertEqual(e.key, "partitioner.boundaries")
      XCTAssertTrue(e.message.contains("strictly increasing"), e.message)
    }
  }

  func testFixedOptions() throws {
    let fixed = FixedPartitioner()
    let both = try XCTUnwrap(
      error(fixed, request(budget: .max, options: ["blocks_per_shard": .int(2), "boundaries": .array([])])))
    XCTAssertEqual(both.key, "partitioner.boundaries")
    XCTAssertTrue(both.message.contains("not both"), both.message)
    let neither = try XCTUnwrap(error(fixed, request(budget: .max)))
    XCTAssertEqual(neither.key, "partitioner")
    XCTAssertTrue(
      neither.message.contains("blocks_per_shard") && neither.message.contains("boundaries"), neither.message)
    for bad: ConfigValue in [.int(0), .int(-2), .double(2), .string("2")] {
      let e = try XCTUnwrap(error(fixed, request(budget: .max, options: ["blocks_per_shard": bad])))
      XCTAssertEqual(e.key, "partitioner.blocks_per_shard")
    }
    let unknown = try XCTUnwrap(error(fixed, request(budget: .max, options: ["blocks_per_shards": .int(2)])))
    XCTAssertEqual(unknown.key, "partitioner.blocks_per_shards")
    XCTAssertTrue(unknown.message.contains("blocks_per_shard, boundaries"), unknown.message)
    for p: Partitioner in [MemoryGreedyPartitioner(), BalancedPartitioner()] {
      let e = try XCTUnwrap(error(p, request(budget: .max, options: ["blocks_per_shard": .int(2)])))
      XCTAssertEqual(e.key, "partitioner.blocks_per_shard")
      XCTAssertTrue(e.message.contains("\"\(p.name)\"") && e.message.contains("no options"), e.message)
    }
  }

  func testFixedShardTooBig() throws {
    // Every block fits a 4 MiB device alone, but h.0...h.2 holds 2 x 192 KiB + 3 MiB state > 3.2 MiB.
    let r = request(budget: 3 * mib + mib / 5, options: ["boundaries": .array([.int(1), .int(4)])])
    let e = try XCTUnwrap(error(FixedPartitioner(), r))
    XCTAssertEqual(e.key, "cluster.device_memory")
    XCTAssertTrue(e.message.contains("shard 1 (blocks h.0...h.2)"), e.message)
    XCTAssertTrue(e.message.contains(formatBytes(r.footprint(1..<4))), e.message)
    XCTAssertTrue(e.message.contains(formatBytes(3 * mib + mib / 5)), e.message)
    XCTAssertEqual(e.description, e.message)
  }
}
