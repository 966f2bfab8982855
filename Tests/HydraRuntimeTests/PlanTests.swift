import Foundation
import HydraConfig
import HydraSchedulers
import XCTest

@testable import HydraBuiltins
@testable import HydraRuntime

/// `hydra-mpi plan` from profiles: task times from a file by hand (checked against makespans
/// computed by hand), bad files refused with the file named, the measured profile cached and
/// reused, and the simulated run written like a real one.
final class PlanTests: XCTestCase {
  func hydra(_ args: [String]) throws -> (status: Int32, out: String, err: String) { try runTool(args) }

  /// Two models of 3 blocks (1-layer GPT: embedding, block, head), cut [0, 1) [1, 3), 2 steps each,
  /// batch 4 and 8 (two shapes).
  func job(_ dir: String) throws -> String { try Self.job(dir) }

  /// The planned job of these tests (two small GPTs), written into `dir`; other tests use it too.
  static func job(_ dir: String) throws -> String {
    let data = dir + "/text.txt"
    try String(repeating: "a profile is seconds per block. ", count: 40).write(
      toFile: data, atomically: true, encoding: .utf8)
    return try writeJob(
      dir,
      """
      [job]
      name = "planned"
      output = "out"
      [cluster]
      devices = 2
      [data]
      format = "text"
      path = "\(data)"
      [model]
      kind = "gpt"
      layers = 1
      d_model = 16
      heads = 2
      context = 8
      [train]
      steps = 2
      batch_size = 4
      eval_every = 0
      checkpoint_every = 0
      [sweep]
      "train.batch_size" = [4, 8]
      [partitioner]
      name = "fixed"
      boundaries = [1]
      """)
  }

  /// A sweep whose states no machine holds is refused by `plan`, before anything exists on disk.
  /// By hand: a block of width d = 8192 has 12 d^2 + 13 d = 805,412,864 parameters, 64 of them
  /// 51,546,423,296; embeddings 256 d + 8 d = 2,162,688; weights, gradients and two AdamW moments at
  /// 4 bytes: 16 x 51,548,585,984 = 824,777,375,744 bytes a model; 2 batch sizes x 1,000 rates =
  /// 2,000 models: 1,649,554,751,488,000 bytes = 1500.3 TiB.
  func testStatesBeyondRAMAndDiskAreRefusedBeforeAnythingIsAllocated() throws {
    let dir = try temporaryFolder()
    let path = try job(dir)
    let lrs = "[" + (1...1000).map { "\(Double($0) * 1e-6)" }.joined(separator: ", ") + "]"
    let config = try JobConfig.load(
      path: path, known: Builtins.known(try Builtins.registry()),
      overrides: ["model.layers=64", "model.d_model=8192", "model.heads=64", "cluster.host_memory=\"1GiB\"", "sweep.train.lr=\(lrs)"])
    let runner = JobRunner(config: config, registry: try Builtins.registry())
    runner.log = { _ in }
    let start = Date()
    XCTAssertThrowsError(try runner.run()) { error in
      let text = "\(error)"
      XCTAssert(error is InputError, text)
      XCTAssert(text.contains("the 2000 models' states need 1500.3 TiB"), text)
      XCTAssert(text.contains("host_memory 1.0 GiB plus"), text)
      XCTAssert(text.contains(path), text)
    }
    XCTAssertLessThan(Date().timeIntervalSince(start), 10)
    XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"), "nothing may be written for a refused job")
  }

  let shape4 = "gpt layers=1 d_model=16 heads=2 context=8 vocab=256 batch=4"
  let shape8 = "gpt layers=1 d_model=16 heads=2 context=8 vocab=256 batch=8"

  func makespans(_ out: String) -> [String: Double] {
    var m: [String: Double] = [:]
    for line in out.split(separator: "\n") {
      let parts = line.split(separator: " ", omittingEmptySubsequences: true)
      if parts.count >= 3, parts[2] == "s", let v = Double(parts[1]) { m[String(parts[0])] = v }
    }
    return m
  }

  /// The profile the hand computations below use, written into `dir`; returns its path.
  func handProfile(_ dir: String) throws -> String {
    let profile = dir + "/profile.json"
    try """
    {"hydra_profile": 1, "shapes": [
      {"shape": "\(shape4)", "forward_seconds": [1, 1, 1], "backward_seconds": [2, 3, 3]},
      {"shape": "\(shape8)", "forward_seconds": 2, "backward_seconds": 4}]}
    """.write(toFile: profile, atomically: true, encoding: .utf8)
    return profile
  }

  func testProfileTimesGiveMakespansComputedByHand() throws {
    let dir = try temporaryFolder()
    let job = try job(dir)
    // m000 (batch 4): shard 0 = block 0: fwd 1, bwd 2; shard 1 = blocks 1-2: fwd 1+1, bwd 3+3.
    // A step: 1 + 2 + 6 + 2 = 11 s; 2 steps: 22 s. m001 (batch 8): every block fwd 2, bwd 4: shard
    // 0 fwd 2 bwd 4, shard 1 fwd 4 bwd 8: a step 18 s, 2 steps 36 s.
    // Each model is evaluated once, after its last step (eval_every 0): a forward of every block
    // over the validation split's rows. The data file is 1,280 bytes: 64 validation tokens (5 %),
    // (64 - 1) / 8 = 7 windows of context 8, so 7 rows: m000 7/4 batches x 3 s = 5.25 s, m001
    // 7/8 x 6 s = 5.25 s.
    // sequential: 22 + 5.25 + 36 + 5.25 = 68.5. lrtf on 2 devices: each model is a strict chain on
    // its own device (two models, two devices): the longer one, 36 + 5.25 = 41.25 s.
    let profile = try handProfile(dir)
    let r = try hydra(["plan", job, "--profile", profile])
    XCTAssertEqual(r.status, 0, r.err)
    let m = makespans(r.out)
    XCTAssertEqual(m["sequential"], 68.5)
    XCTAssertEqual(m["model-parallel"], 68.5)
    XCTAssertEqual(m["lrtf"], 41.25)
    XCTAssertEqual(m["planned"], 41.25)
    XCTAssertTrue(r.out.contains("ideal makespan 34.25 s"), r.out)
  }

  /// First-step times from the profile replace the others in each model's first step only, and a
  /// checkpoint write holds the device after the last step (checkpoint_every 0: only there).
  /// m000 (batch 4), first step: shard 0 fwd 2, shard 1 fwd 2 + 2, bwd 6 + 6, shard 0 bwd 4 = 22;
  /// its second step 11 (as above), with its evaluation 5.25 (steady forwards) and its checkpoint
  /// 0.75: 39. m001 (batch 8), every block's first fwd 3 and bwd 5: 3 + 6 + 10 + 5 = 24, then 18,
  /// and 5.25, no checkpoint time: 47.25. sequential: 86.25; lrtf on 2 devices: each model on its
  /// own device, 47.25.
  func testFirstStepAndCheckpointTimesGiveMakespansComputedByHand() throws {
    let dir = try temporaryFolder()
    let job = try job(dir)
    let profile = dir + "/first.json"
    try """
    {"hydra_profile": 1, "shapes": [
      {"shape": "\(shape4)", "forward_seconds": [1, 1, 1], "backward_seconds": [2, 3, 3],
       "first_forward_seconds": 2, "first_backward_seconds": [4, 6, 6], "checkpoint_seconds": 0.75},
      {"shape": "\(shape8)", "forward_seconds": 2, "backward_seconds": 4,
       "first_forward_seconds": 3, "first_backward_seconds": 5}]}
    """.write(toFile: profile, atomically: true, encoding: .utf8)
    let r = try hydra(["plan", job, "--profile", profile])
    XCTAssertEqual(r.status, 0, r.err)
    let m = makespans(r.out)
    XCTAssertEqual(m["sequential"], 86.25)
    XCTAssertEqual(m["lrtf"], 47.25)
    // Every 1 step instead: m000 writes 2 checkpoints, 39.75; sequential 87.
    let every = try hydra(["plan", job, "--profile", profile, "--set", "train.checkpoint_every=1"])
    XCTAssertEqual(makespans(every.out)["sequential"], 87, every.out + every.err)
    // The file's own JSON reads back the same.
    let parsed = try ProfileFile.read(profile)
    XCTAssertEqual(parsed.shapes[0].firstBackwardSeconds, .each([4, 6, 6]))
    XCTAssertEqual(try ProfileFile.parse(Data(parsed.json().utf8), file: "again"), parsed)
  }

  /// The job's selection policy runs in the simulation. sha with min_steps 1, eta 2: one rung at
  /// step 1, where the better of the two models (by the stand-in ranking) goes on and the other
  /// stops. From the hand computation above: m000's step 1 and rung evaluation end at 11 + 5.25 =
  /// 16.25 on its device, m001's at 18 + 5.25 = 23.25 on the other; the rung is decided then. If
  /// m000 goes on: its 2nd step and last evaluation, 23.25 + 11 + 5.25 = 39.5; if m001 does:
  /// 23.25 + 18 + 5.25 = 46.5. The same value every time (the stand-in comes from the job's seed).
  func testSelectionRunsInThePlan() throws {
    let dir = try temporaryFolder()
    let job = try job(dir)
    let profile = try handProfile(dir)
    let args = [
      "plan", job, "--profile", profile, "--scheduler", "lrtf", "--set", "selection.name=\"sha\"", "--set",
      "selection.min_steps=1", "--set", "selection.reduction_factor=2",
    ]
    let r = try hydra(args)
    XCTAssertEqual(r.status, 0, r.err)
    XCTAssertTrue(r.out.contains("selection sha"), r.out)
    let lrtf = try XCTUnwrap(makespans(r.out)["lrtf"], r.out)
    XCTAssertTrue(lrtf == 39.5 || lrtf == 46.5, "\(lrtf)")
    XCTAssertEqual(makespans(try hydra(args).out)["lrtf"], lrtf)
  }

  func testBadProfilesAreRefusedNamingTheFile() throws {
    let dir = try temporaryFolder()
    let job = try job(dir)
    let cases: [(String, String)] = [
      ("{", "not valid JSON"),
      (#"{"hydra_profile": 2, "shapes": []}"#, "hydra_profile must be 1"),
      (#"{"hydra_profile": 1}"#, "missing \"shapes\""),
      (
        #"{"hydra_profile": 1, "shapes": [{"shape": "\#(shape4)", "forward_seconds": [1, -1, 1], "backward_seconds": 1}]}"#,
        "forward_seconds[1] must be a number of seconds"
      ),
      (
        #"{"hydra_profile": 1, "shapes": [{"shape": "\#(shape4)", "forward_seconds": [1, 1], "backward_seconds": 1}]}"#,
        "has 3 blocks"
      ),
      (
        #"{"hydra_profile": 1, "shapes": [{"shape": "\#(shape4)", "forward_seconds": 1, "backward_seconds": 1}]}"#,
        "no times for the shape \"\(shape8)\""
      ),
      (
        #"{"hydra_profile": 1, "shapes": [{"shape": "x", "forward_seconds": "1", "backward_seconds": 1}]}"#, "shapes[0]"
      ),
      (
        #"{"hydra_profile": 1, "shapes": [{"shape": "x", "forward_seconds": 1, "backward_seconds": 1, "first_backward_seconds": [-2]}]}"#,
        "first_backward_seconds[0] must be a number of seconds"
      ),
      (
        #"{"hydra_profile": 1, "shapes": [{"shape": "\#(shape4)", "forward_seconds": 1, "backward_seconds": 1, "first_forward_seconds": [1, 1]}]}"#,
        "has 3 blocks"
      ),
      (
        #"{"hydra_profile": 1, "shapes": [{"shape": "x", "forward_seconds": 1, "backward_seconds": 1, "checkpoint_seconds": -1}]}"#,
        "checkpoint_seconds must be a number of seconds"
      ),
    ]
    for (i, (text, message)) in cases.enumerated() {
      let profile = dir + "/bad-\(i).json"
      try text.write(toFile: profile, atomically: true, encoding: .utf8)
      let r = try hydra(["plan", job, "--profile", profile])
      XCTAssertEqual(r.status, 2, "case \(i): \(r.out) \(r.err)")
      XCTAssertTrue(r.err.contains(profile), "case \(i): \(r.err)")
      XCTAssertTrue(r.err.contains(message), "case \(i): \(r.err)")
    }
    let missing = try hydra(["plan", job, "--profile", dir + "/none.json"])
    XCTAssertEqual(missing.status, 2)
    XCTAssertTrue(missing.err.contains(dir + "/none.json"), missing.err)
  }

  func testMeasuredProfileIsCachedInTheOutputFolderAndReused() throws {
    let dir = try temporaryFolder()
    let job = try job(dir)
    let first = try hydra(["plan", job, "--measure", "--repetitions", "1", "--scheduler", "lrtf"])
    XCTAssertEqual(first.status, 0, first.err)
    XCTAssertTrue(first.out.contains("measuring \(shape4)"), first.out)
    XCTAssertTrue(first.out.contains("measuring \(shape8)"), first.out)
    let cache = dir + "/out/profile.json"
    let profile = try ProfileFile.read(cache)
    XCTAssertEqual(profile.shapes.map(\.shape), [shape4, shape8])
    XCTAssertEqual(profile.kernels, "cpu")
    XCTAssertEqual(profile.threadsPerDevice, 1)
    let times = try profile.blockSeconds(shape4, blocks: 3, file: cache)
    XCTAssertTrue((times.forward + times.backward).allSatisfy { $0 > 0 })
    // The first step's times are measured too (on memory mapped afresh).
    XCTAssertNotNil(profile.shapes[0].firstForwardSeconds)
    XCTAssertTrue((times.firstForward + times.firstBackward).allSatisfy { $0 > 0 })
    // And one checkpoint write, in a scratch folder that is gone again.
    XCTAssertGreaterThan(profile.shapes[0].checkpointSeconds ?? 0, 0)
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/out"), ["profile.json"])
    // The second plan measures nothing and simulates the same times.
    let second = try hydra(["plan", job, "--measure", "--scheduler", "lrtf"])
    XCTAssertEqual(second.status, 0, second.err)
    XCTAssertFalse(second.out.contains("measuring"), second.out)
    XCTAssertEqual(makespans(second.out)["lrtf"], makespans(first.out)["lrtf"])
    // The cache is no result: the job still runs into that folder.
    XCTAssertEqual(try hydra(["run", job]).status, 0)
    // Its trace shows the device's time on each model's checkpoint (one each, after the last step).
    let trace = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/out/trace.json")))
    let boxes = ((trace as? [String: Any])?["traceEvents"] as? [[String: Any]] ?? []).filter {
      $0["cat"] as? String == "checkpoint"
    }
    XCTAssertEqual(boxes.compactMap { ($0["args"] as? [String: Any])?["step"] as? Int }, [2, 2])
    XCTAssertEqual(Set(boxes.compactMap { ($0["args"] as? [String: Any])?["model"] as? String }), ["m000", "m001"])
  }

  func testOutputHoldsTheSimulatedRunLikeARealOne() throws {
    let dir = try temporaryFolder()
    let job = try job(dir)
    let profile = dir + "/profile.json"
    try """
    {"hydra_profile": 1, "bandwidth_bytes_per_second": 1e12, "shapes": [
      {"shape": "\(shape4)", "forward_seconds": 1, "backward_seconds": 2, "checkpoint_seconds": 0.5},
      {"shape": "\(shape8)", "forward_seconds": 1, "backward_seconds": 2}]}
    """.write(toFile: profile, atomically: true, encoding: .utf8)
    let r = try hydra(["plan", job, "--profile", profile, "--scheduler", "sequential", "--output", dir + "/sim"])
    XCTAssertEqual(r.status, 0, r.err)
    let folder = dir + "/sim/sequential"
    let trace = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/trace.json")))
    let events = ((trace as? [String: Any])?["traceEvents"] as? [[String: Any]] ?? []).filter {
      $0["ph"] as? String == "X"
    }
    // 2 models x 2 steps x 2 shards x (fwd + bwd), each model's final evaluation, and m000's
    // final checkpoint (m001's shape has no checkpoint time).
    XCTAssertEqual(events.count, 19)
    XCTAssertEqual(events.filter { $0["cat"] as? String == "eval" }.count, 2)
    XCTAssertEqual(events.filter { $0["cat"] as? String == "checkpoint" }.count, 1)
    XCTAssertTrue(try String(contentsOfFile: folder + "/schedule.svg").contains("<svg"))
    let plan =
      try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/plan.json")))
      as? [String: Any]
    // sequential, everything on device 0: each model's step is 3 blocks x (1 + 2) = 9 s of work,
    // plus moves: every task's shard state comes from the host or the other shard's device. Then
    // each model's final evaluation (7 validation rows, see above): m000 7/4 x 3 s, m001 7/8 x 3 s,
    // 7.875 s together, and m000's checkpoint, 0.5 s, which keep device 0 busy too: utilisation 1.
    let devices = plan?["device_utilisation"] as? [Double]
    XCTAssertEqual(devices?.count, 2)
    XCTAssertEqual(devices?[1], 0)
    XCTAssertEqual(devices?[0] ?? 0, 1, accuracy: 1e-9)
    let finish = (plan?["models"] as? [[String: Any]])?.map { $0["finish_seconds"] as? Double ?? -1 }
    let makespan = plan?["makespan_seconds"] as? Double ?? 0
    XCTAssertEqual(finish?.last, makespan)
    XCTAssertGreaterThan(plan?["moved_bytes"] as? Int ?? 0, 0)
    XCTAssertGreaterThan(makespan, 44.375)
    XCTAssertLessThan(makespan, 44.385)
  }

  /// The coordinator hands the scheduler the workload before its first decision: every model, its
  /// steps, one time per shard, the devices.
  func testTheCoordinatorPlansBeforeItsFirstDecision() throws {
    final class Recording: Scheduler, @unchecked Sendable {
      let name = "recording"
      let lrtf = LRTFScheduler()
      var workloads: [Workload] = []
      var decisionsBeforePlan = 0
      var decisions = 0
      func plan(_ workload: Workload) throws { workloads.append(workload) }
      var report: [String: Double] { ["decisions": Double(decisions)] }
      func schedule(_ view: SchedulerView) -> [Assignment] {
        if workloads.isEmpty { decisionsBeforePlan += 1 }
        decisions += 1
        return lrtf.schedule(view)
      }
    }
    let recording = Recording()
    let registry = try PluginRegistry { b in
      try Builtins.register(into: &b)
      try b.registerScheduler("recording") { _, _ in recording }
    }
    let dir = try temporaryFolder()
    let path = try job(dir)
    let config = try JobConfig.load(
      path: path, known: Builtins.known(registry), overrides: ["scheduler.name=\"recording\""])
    let runner = JobRunner(config: config, registry: registry)
    runner.log = { _ in }
    _ = try runner.run()
    XCTAssertEqual(recording.workloads.count, 1)
    XCTAssertEqual(recording.decisionsBeforePlan, 0)
    XCTAssertGreaterThan(recording.decisions, 0)
    // The scheduler's report, read when the job ended, is in summary.json.
    let summary = try XCTUnwrap(
      JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/out/summary.json")))
        as? [String: Any])
    let coordinator = try XCTUnwrap(summary["coordinator"] as? [String: Any])
    let report = try XCTUnwrap(coordinator["scheduler_report"] as? [String: Double])
    XCTAssertEqual(report, ["decisions": Double(recording.decisions)])
    let w = try XCTUnwrap(recording.workloads.first)
    XCTAssertEqual(w.devices, 2)
    XCTAssertEqual(w.models.map(\.steps), [2, 2])
    XCTAssertEqual(w.models.map(\.shardCount), [2, 2])
    // FLOP estimates: the batch-8 model's tasks take twice the batch-4 model's.
    for s in 0..<2 {
      XCTAssertEqual(w.models[1].forwardSeconds[s], 2 * w.models[0].forwardSeconds[s], accuracy: 1e-12)
      XCTAssertGreaterThan(w.models[0].backwardSeconds[s], 0)
    }
  }
}
