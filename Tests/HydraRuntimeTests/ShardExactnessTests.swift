import Foundation
import HydraConfig
import HydraCore
import XCTest

@testable import HydraRuntime

/// The exactness invariant for shards and spilling: cutting a model into shards (by any
/// partitioner), recomputing activations, and moving shard state through RAM and disk change when
/// and where work runs, never what is computed. Final weights and optimizer state are compared bit
/// for bit against the same job run all-resident in one shard.
final class ShardExactnessTests: XCTestCase {
  // Every run here also checks the coordinator's ready index against a rebuild from every model.
  override func setUp() { Coordinator.checksReadyIndex = true }
  override func tearDown() { Coordinator.checksReadyIndex = false }

  func gptJob(_ dir: String) throws -> String {
    let data = dir + "/text.txt"
    try String(repeating: "shards change when and where, never what. ", count: 200).write(
      toFile: data, atomically: true, encoding: .utf8)
    return try writeJob(
      dir,
      """
      [job]
      name = "exact-gpt"
      output = "out"
      seed = 9
      [cluster]
      kernels = "cpu"
      [data]
      format = "text"
      path = "\(data)"
      [model]
      kind = "gpt"
      layers = 3
      d_model = 16
      heads = 2
      context = 8
      [train]
      steps = 4
      batch_size = 4
      weight_decay = 0.1
      warmup_steps = 1
      eval_every = 2
      eval_batches = 2
      """)
  }

  func mlpJob(_ dir: String) throws -> String {
    try writeJob(
      dir,
      """
      [job]
      name = "exact-mlp"
      output = "out"
      [data]
      format = "csv"
      path = "\(repositoryRoot)/Examples/data/digits.csv.gz"
      feature_scale = 0.0625
      [model]
      kind = "mlp"
      hidden = [32, 24, 16]
      classes = 10
      [train]
      steps = 5
      batch_size = 8
      optimizer = "sgd"
      lr = 0.05
      weight_decay = 0.01
      eval_every = 0
      eval_batches = 2
      """)
  }

  /// Parameter values and optimizer state of every model, read shard by shard.
  func finalState(_ result: JobRunner.Result) throws -> [[String: [UInt32]]] {
    try result.runs.map { run in
      var out: [String: [UInt32]] = [:]
      try run.withEveryShard(on: 0) { s in
        for p in run.parameters(ofShard: s) where p.replicaOf == nil {
          out[p.name] = p.value.array.map(\.bitPattern)
          for (i, t) in p.state.enumerated() { out["\(p.name)#\(i)"] = t.array.map(\.bitPattern) }
        }
      }
      return out
    }
  }

  func check(_ job: String, variants: [[String]], minimumShards: Int) throws {
    let baseline = try runJob(job)
    XCTAssertEqual(baseline.runs[0].shards.count, 1)
    let expected = try finalState(baseline)
    let expectedEvals = baseline.runs[0].evaluations.map(\.loss)
    for overrides in variants {
      let result = try runJob(job, overrides: overrides)
      let run = result.runs[0]
      XCTAssertGreaterThanOrEqual(run.shards.count, minimumShards, "\(overrides)")
      XCTAssertEqual(try finalState(result), expected, "\(overrides)")
      XCTAssertEqual(run.evaluations.map(\.loss), expectedEvals, "\(overrides)")
      // (`runJob` checked every device's peak against its budget.)
      if overrides.contains("cluster.host_memory=1") {
        // Shard states and everything a model keeps between its tasks went to disk and came back.
        XCTAssertGreaterThan(result.store.bytesWritten, 0, "\(overrides): nothing went to disk")
        XCTAssertGreaterThan(result.store.bytesRead, 0, "\(overrides): nothing came back from disk")
        XCTAssertEqual(result.store.peakBytes, 0)
        XCTAssertGreaterThan(result.store.transitBytesWritten, 0, "\(overrides): no in-flight tensor went to disk")
      }
    }
  }

  func testGPTShardedSpilledAndRecomputedIsBitwiseIdentical() throws {
    let dir = try temporaryFolder()
    // A transformer block here holds ~80 KiB of state and ~60 KiB of activations at batch 4:
    // a 600 KiB budget (300 KiB per shard with double buffering) forces several shards.
    try check(try gptJob(dir), variants: shardingVariants(budget: "600KiB", half: "300KiB"), minimumShards: 2)
  }

  func testMLPShardedSpilledAndRecomputedIsBitwiseIdentical() throws {
    let dir = try temporaryFolder()
    try check(try mlpJob(dir), variants: shardingVariants(budget: "80KiB", half: "44KiB"), minimumShards: 2)
  }

  /// `profile_steps` measures every block; balanced then partitions by those seconds.
  func testAMeasuredProfileFeedsThePartitioner() throws {
    let dir = try temporaryFolder()
    let config = try JobConfig.load(
      path: try gptJob(dir), known: testKnownPlugins(),
      overrides: ["cluster.device_memory=600KiB", "partitioner.profile_steps=3"])
    let plans = try JobRunner(config: config, registry: testRegistry()).plan()
    let seconds = try XCTUnwrap(plans[0].request.blockSeconds)
    XCTAssertEqual(seconds.count, 5)
    XCTAssertTrue(seconds.allSatisfy { $0 > 0 && $0 < 1 }, "\(seconds)")
    // A transformer block does far more work than the embedding lookup.
    XCTAssertGreaterThan(seconds[1], seconds[0])
    XCTAssertFalse(
      plans[0].request.options.keys.contains("profile_steps"), "the plugin must not see the runtime's option")
    XCTAssertThrowsError(
      try JobRunner(
        config: try JobConfig.load(
          path: dir + "/job.toml", known: testKnownPlugins(), overrides: ["partitioner.profile_steps=-1"]),
        registry: testRegistry()
      ).plan())
  }

  func testABudgetTooSmallForABlockIsAnErrorNamingTheBlock() throws {
    let dir = try temporaryFolder()
    let job = try gptJob(dir)
    XCTAssertThrowsError(try runJob(job, overrides: ["cluster.device_memory=64KiB"])) { error in
      let text = "\(error)"
      XCTAssertTrue(text.contains("job.toml"), text)
      XCTAssertTrue(text.contains("\"embedding\"") || text.contains("\"h.0\""), text)
      XCTAssertTrue(text.contains("64.0 KiB"), text)
    }
    XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"))
  }
}
