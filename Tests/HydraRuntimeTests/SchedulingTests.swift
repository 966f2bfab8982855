import Foundation
import HydraBackendSHM
import HydraConfig
import HydraCore
import XCTest

@testable import HydraRuntime

/// Many models on several devices: whatever the scheduler and the number of devices, every model
/// ends bit for bit where it ends when trained alone; the trace is a valid schedule.
final class SchedulingTests: XCTestCase {
  // Every run here also checks the coordinator's ready index against a rebuild from every model.
  override func setUp() { Coordinator.checksReadyIndex = true }
  override func tearDown() { Coordinator.checksReadyIndex = false }

  static let schedulers = ["lrtf", "fifo", "round-robin", "random", "sequential", "model-parallel", "planned"]

  func sweepJob(_ dir: String, lrs: String = "3e-3, 1e-3, 3e-4") throws -> String {
    let data = dir + "/text.txt"
    try String(repeating: "every device busy with some model's next shard. ", count: 150)
      .write(toFile: data, atomically: true, encoding: .utf8)
    return try writeJob(
      dir,
      """
      [job]
      name = "sweep"
      output = "out"
      seed = 4
      [cluster]
      device_memory = "400KiB"
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
      steps = 3
      batch_size = 4
      eval_every = 0
      eval_batches = 2
      [sweep]
      "train.lr" = [\(lrs)]
      "model.d_model" = [16, 24]
      """)
  }

  func weights(_ result: JobRunner.Result) throws -> [String: [String: [UInt32]]] {
    var out: [String: [String: [UInt32]]] = [:]
    for run in result.runs where run.status == .done {
      var w: [String: [UInt32]] = [:]
      try run.withEveryShard(on: 0) { s in
        for p in run.parameters(ofShard: s) where p.replicaOf == nil {
          w[p.name] = p.value.array.map(\.bitPattern)
          for (i, t) in p.state.enumerated() { w["\(p.name)#\(i)"] = t.array.map(\.bitPattern) }
        }
      }
      out[run.id] = w
    }
    return out
  }

  func testEverySchedulerOnOneTwoAndThreeDevicesGivesBitwiseIdenticalModels() throws {
    let dir = try temporaryFolder()
    let job = try sweepJob(dir)
    let alone = try runJob(job, overrides: ["scheduler.name=\"sequential\"", "cluster.devices=1"])
    XCTAssertEqual(alone.runs.count, 6)
    XCTAssertTrue(alone.runs.allSatisfy { $0.shards.count >= 2 }, "the budget should cut every model")
    let expected = try weights(alone)
    XCTAssertEqual(expected.count, 6)
    for scheduler in Self.schedulers {
      for devices in [1, 2, 3] {
        let result = try runJob(job, overrides: ["scheduler.name=\"\(scheduler)\"", "cluster.devices=\(devices)"])
        XCTAssertEqual(try weights(result), expected, "\(scheduler) on \(devices) device(s)")
        // Every boundary and tied tensor posted was taken and let go.
        XCTAssertEqual((result.backend as! SharedMemoryBackend).outstanding, 0)
        try checkTrace(
          result.output + "/trace.json", runs: result.runs, devices: devices, label: "\(scheduler)/\(devices)")
      }
    }
  }

  /// trace.json: a device (and its writer thread) never runs two boxes at once, and every shard task of every model appears
  /// exactly once per step.
  func checkTrace(_ path: String, runs: [ModelRun], devices: Int, label: String) throws {
    let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    let events = (json["traceEvents"] as! [[String: Any]]).filter { ($0["ph"] as? String) == "X" }
    var byDevice: [Int: [(Double, Double)]] = [:]
    var seen: [String: Int] = [:]
    for e in events {
      let tid = e["tid"] as! Int
      // Lanes past the devices' are their writer threads': checkpoints written off the device.
      XCTAssertTrue((0..<(2 * devices)).contains(tid), label)
      if tid >= devices { XCTAssertEqual((e["args"] as? [String: Any])?["task"] as? String, "checkpoint", label) }
      let ts = (e["ts"] as! NSNumber).doubleValue, dur = (e["dur"] as! NSNumber).doubleValue
      byDevice[tid, default: []].append((ts, ts + dur))
      let args = e["args"] as! [String: Any]
      if !["eval", "checkpoint"].contains(args["task"] as! String) {
        seen["\(args["model"]!) \(args["task"]!) \(args["step"]!)", default: 0] += 1
      }
    }
    for (d, boxes) in byDevice {
      let sorted = boxes.sorted { $0.0 < $1.0 }
      for (a, b) in zip(sorted, sorted.dropFirst()) {
        XCTAssertLessThanOrEqual(a.1, b.0 + 1, "\(label): device \(d) runs two tasks at once")  // 1 µs rounding
      }
    }
    var expected: [String: Int] = [:]
    for run in runs {
      for step in 0..<run.settings.steps {
        for s in run.shards.indices {
          expected["\(run.id) s\(s) fwd \(step)"] = 1
          expected["\(run.id) s\(s) bwd \(step)"] = 1
        }
      }
    }
    XCTAssertEqual(seen, expected, label)
  }

  /// A learning rate that makes one model diverge stops that model alone: it is reported as
  /// diverged, and every other model ends exactly as in a job without it.
  func testADivergingModelFailsAloneAndTheOthersAreUntouched() throws {
    let dir = try temporaryFolder()
    let without = try runJob(
      try sweepJob(dir, lrs: "3e-3, 1e-3"), overrides: ["cluster.devices=2", "scheduler.name=\"lrtf\""])
    let dir2 = try temporaryFolder()
    // The absurd rate comes last so that the other members keep their ids and seeds.
    let with = try runJob(
      try sweepJob(dir2, lrs: "3e-3, 1e-3, 1e9"), overrides: ["cluster.devices=2", "scheduler.name=\"lrtf\""])
    XCTAssertEqual(with.runs.count, 6)
    let diverged = with.runs.filter { $0.status.name == "diverged" }.map(\.id)
    XCTAssertEqual(diverged, ["m004", "m005"])
    XCTAssertEqual((with.backend as! SharedMemoryBackend).outstanding, 0, "a diverged model leaves nothing posted")
    XCTAssertEqual(try weights(with), try weights(without))
    let summary =
      try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: with.output + "/summary.json")))
      as! [String: Any]
    let statuses = (summary["models"] as! [[String: Any]]).map { $0["status"] as! String }
    XCTAssertEqual(statuses, ["done", "done", "done", "done", "diverged", "diverged"])
  }
}
