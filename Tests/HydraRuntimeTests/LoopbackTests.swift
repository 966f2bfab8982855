import Foundation
import HydraConfig
import HydraCore
import HydraSchedulers
import XCTest

@testable import HydraBuiltins
@testable import HydraRuntime

/// The distributed runtime in-process: every rank a thread with its own `JobRunner`, models, host
/// store and device, talking through a `Loopback` transport. The oracle is the exactness invariant:
/// whatever the ranks, scheduler and placement, the checkpoints are the bytes of the same job under
/// `shm` (Scripts/test-mpi checks the same under mpirun).
final class LoopbackTests: XCTestCase {
  // Every run here also checks the coordinator's ready index against a rebuild from every model.
  override func setUp() { Coordinator.checksReadyIndex = true }
  override func tearDown() { Coordinator.checksReadyIndex = false }

  static let sweep = repositoryRoot + "/Tests/mpi/sweep.toml"
  /// The shm reference runs, by their overrides, made once.
  nonisolated(unsafe) static var references: [String: String] = [:]

  static let debugging = ProcessInfo.processInfo.environment["HYDRA_TEST_LOG"] != nil

  func known() -> KnownPlugins {
    var k = testKnownPlugins()
    k.backends.append("loopback")
    k.schedulers.append("failing")
    return k
  }

  /// The job on `ranks` loopback ranks; rank 0's result. `configure` sees each rank's runtime
  /// before the job starts.
  func runLoopback(
    ranks: Int, output: String, overrides: [String], pauseAt: Int? = nil, resume: Bool = false,
    resumeRanks: Set<Int>? = nil, loopback: Loopback? = nil, job: String = LoopbackTests.sweep,
    registry: @escaping () throws -> PluginRegistry = { testRegistry() }, failures: ByRank<Error>? = nil,
    configure: @escaping (DistributedRuntime) -> Void = { _ in }
  ) throws -> (result: JobRunner.Result, summary: [String: Any]) {
    let loop = loopback ?? Loopback(ranks: ranks)
    let overrides = overrides + ["cluster.backend=\"loopback\"", "job.output=\"\(output)\""]
    let outcomes = ByRank<Result<JobRunner.Result, Error>>()
    let failedFirst = FirstValue<Int>()
    let group = DispatchGroup()
    for rank in 0..<ranks {
      group.enter()
      let thread = Thread {
        defer { group.leave() }
        do {
          let config = try JobConfig.load(path: job, known: self.known(), overrides: overrides)
          let runtime = try DistributedRuntime(transport: loop.transport(rank: rank))
          configure(runtime)
          let runner = JobRunner(config: config, registry: try registry())
          runner.backend = runtime
          runner.log = Self.debugging ? { print("rank \(rank): \($0)") } : { _ in }
          runner.pauseAt = pauseAt
          runner.resume = resume && resumeRanks?.contains(rank) != false
          let result = try runner.run()
          runtime.close()
          outcomes.set(rank, .success(result))
        } catch {
          outcomes.set(rank, .failure(error))
          failures?.set(rank, error)
          // As the tool's abort would: the other ranks stop instead of serving for good. The first
          // rank to fail is the one reported.
          failedFirst.setIfEmpty(rank)
          loop.fail(rank: rank)
        }
      }
      thread.stackSize = 8 << 20
      thread.start()
    }
    // HYDRA_TEST_LOG=1 prints the ranks' logs and gives up sooner.
    let limit = Self.debugging ? 20.0 : 300.0
    guard group.wait(timeout: .now() + limit) == .success else {
      throw RuntimeError("the loopback job on \(ranks) ranks did not end in \(Int(limit)) s")
    }
    if let first = failedFirst.value, case .failure(let error) = outcomes.get(first) {
      throw RuntimeError("rank \(first): \(error)")
    }
    var results: [JobRunner.Result] = []
    for rank in 0..<ranks {
      switch outcomes.get(rank) {
      case .success(let r): results.append(r)
      case .failure(let error): throw RuntimeError("rank \(rank): \(error)")
      case nil: throw RuntimeError("rank \(rank) ended without a result")
      }
    }
    let result = results[0]
    XCTAssertTrue(result.coordinating)
    XCTAssertTrue(results.dropFirst().allSatisfy { !$0.coordinating })
    let data = try Data(contentsOf: URL(fileURLWithPath: output + "/summary.json"))
    let summary = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    return (result, summary)
  }

  /// The same job under shm on 2 devices: the bytes every rank count must end with.
  func reference(_ overrides: [String]) throws -> String {
    let key = overrides.joined(separator: "\n")
    if let done = Self.references[key] { return done }
    let output = try temporaryFolder() + "/shm"
    _ = try runJob(
      Self.sweep, overrides: overrides + ["cluster.backend=\"shm\"", "cluster.devices=2", "job.output=\"\(output)\""])
    Self.references[key] = output
    return output
  }

  /// Every file under `checkpoints/` the same bytes in both folders (and the same files). A resumed
  /// run (`resumed`) kept other intermediate units: then the newest unit and the top-level files
  /// must be there and the same, and so must any other unit both folders hold.
  func assertSameCheckpoints(
    _ reference: String, _ output: String, _ label: String, resumed: Bool = false, file: StaticString = #filePath,
    line: UInt = #line
  ) throws {
    let fm = FileManager.default
    let files = { (root: String) throws -> Set<String> in
      Set(
        try XCTUnwrap(fm.subpaths(atPath: root + "/checkpoints")).filter {
          $0.hasSuffix(".safetensors") || $0.hasSuffix(".json")
        })
    }
    let a = try files(reference), b = try files(output)
    if resumed {
      let newest = a.filter { $0.contains("step-00000006/") || !$0.contains("step-") }
      XCTAssertTrue(
        newest.isSubset(of: b), "\(label): missing \(newest.subtracting(b).sorted())", file: file, line: line)
    } else {
      XCTAssertEqual(a.sorted(), b.sorted(), "\(label): checkpoint files", file: file, line: line)
    }
    let common = a.intersection(b).sorted()
    for path in common {
      let x = try Data(contentsOf: URL(fileURLWithPath: reference + "/checkpoints/" + path))
      let y = try Data(contentsOf: URL(fileURLWithPath: output + "/checkpoints/" + path))
      XCTAssertEqual(x, y, "\(label): \(path)", file: file, line: line)
    }
    XCTAssertGreaterThan(common.count, 8, label, file: file, line: line)
  }

  func coordinator(_ summary: [String: Any]) -> [String: Any] { summary["coordinator"] as? [String: Any] ?? [:] }

  /// 1-4 ranks, every scheduler, shards placed one by one; 2-4 ranks with whole models placed: the
  /// bytes of shm every time, no tensor left over, and moves where the scheduler moves shards.
  func testLoopbackExactnessMatrix() throws {
    let reference = try reference([])
    let root = try temporaryFolder()
    var cases: [(ranks: Int, scheduler: String, placement: String)] = []
    for ranks in 1...4 {
      for scheduler in ["lrtf", "fifo", "round-robin", "random", "sequential", "model-parallel", "planned"] {
        cases.append((ranks, scheduler, "by-shard"))
      }
    }
    for ranks in 2...4 { cases.append((ranks, "lrtf", "by-model")) }
    for c in cases {
      let label = "\(c.ranks) ranks, \(c.scheduler), \(c.placement)"
      let output = root + "/\(c.ranks)-\(c.scheduler)-\(c.placement)"
      let (result, summary) = try runLoopback(
        ranks: c.ranks, output: output,
        overrides: ["scheduler.name=\"\(c.scheduler)\"", "cluster.placement=\"\(c.placement)\""])
      try assertSameCheckpoints(reference, output, label)
      XCTAssertTrue(result.runs.allSatisfy { $0.status == .done && $0.step == 6 }, label)
      let coordinator = coordinator(summary)
      XCTAssertEqual(coordinator["tensors_left_over"] as? Int, 0, label)
      XCTAssertEqual(coordinator["backend"] as? String, "loopback", label)
      if c.ranks > 1 && c.placement == "by-shard" {
        XCTAssertGreaterThan(coordinator["tensors_sent"] as? Int ?? 0, 0, "\(label): chains cross ranks")
      }
      // Every device that ran a task held a shard's state and that task's working set at once, so
      // its reported peak (a remote rank's comes back in its report) is at least the smallest sum.
      let models = summary["models"] as? [[String: Any]] ?? []
      let smallestTask = models.flatMap { m -> [Int] in
        let f = m["footprint_bytes"] as? [Int] ?? [], w = m["measured_working_set_bytes"] as? [Int] ?? []
        return zip(f, w).map { $0 + $1 }
      }.min()
      let memory = summary["memory"] as? [String: Any] ?? [:]
      let devices = memory["devices"] as? [[String: Any]] ?? []
      let busy = coordinator["device_busy_fraction"] as? [Double] ?? []
      XCTAssertEqual(devices.count, c.ranks, label)
      for (d, fraction) in busy.enumerated() where fraction > 0 && d < devices.count {
        XCTAssertGreaterThanOrEqual(
          devices[d]["peak_bytes"] as? Int ?? 0, try XCTUnwrap(smallestTask), "\(label): device \(d) peak")
      }
      if c.ranks > 1 && c.scheduler == "random" {
        XCTAssertGreaterThan(coordinator["shard_moves"] as? Int ?? 0, 0, "\(label): random moves shards")
      }
    }
  }

  /// 4 MiB per device and 1 byte of host RAM: every rank's shard states live in its own spill
  /// files, move and are gathered from there.
  func testLoopbackStatesOnDiskMoveAndGather() throws {
    let overrides = [
      "scheduler.name=\"random\"", "cluster.placement=\"by-shard\"", "cluster.host_memory=1",
      "cluster.device_memory=\"4MiB\"",
    ]
    let reference = try reference([])
    let output = try temporaryFolder() + "/disk"
    let (result, summary) = try runLoopback(ranks: 3, output: output, overrides: overrides)
    try assertSameCheckpoints(reference, output, "states on disk")
    XCTAssertGreaterThan(coordinator(summary)["shard_moves"] as? Int ?? 0, 0)
    XCTAssertGreaterThan(result.store.bytesWritten, 0, "rank 0 spilled")
  }

  /// Paused at step 4 on 2 ranks, resumed on 3 under another scheduler: the bytes of one run.
  func testLoopbackPauseOnTwoRanksResumeOnThree() throws {
    let reference = try reference([])
    let output = try temporaryFolder() + "/resumed"
    let (paused, _) = try runLoopback(ranks: 2, output: output, overrides: [], pauseAt: 4)
    XCTAssertTrue(paused.runs.allSatisfy { $0.step == 4 }, "\(paused.runs.map(\.step))")
    let (resumed, _) = try runLoopback(
      ranks: 3, output: output, overrides: ["scheduler.name=\"random\""], resume: true)
    XCTAssertTrue(resumed.runs.allSatisfy { $0.status == .done && $0.step == 6 })
    try assertSameCheckpoints(reference, output, "paused on 2, resumed on 3", resumed: true)
  }

  /// A rank that takes up its models at other steps than rank 0 (here one left without --resume,
  /// as a node that sees another output folder would be) stops the job on every rank before
  /// anything trains, saying why; the checkpoints are as the paused run left them.
  func testLoopbackRanksResumingAtDifferentStepsStopTheJob() throws {
    let output = try temporaryFolder() + "/differing"
    _ = try runLoopback(ranks: 2, output: output, overrides: [], pauseAt: 4)
    let loop = Loopback(ranks: 2)
    let failures = ByRank<Error>()
    let job = Thread {
      _ = try? self.runLoopback(
        ranks: 2, output: output, overrides: [], resume: true, resumeRanks: [0], loopback: loop, failures: failures)
    }
    job.start()
    XCTAssertTrue(loop.waitForAbort(seconds: 60), "the job did not end")
    // Both ranks find it at the same point; the first to stop ends the job for the other (which
    // may hear of that before it records its own error).
    let first = try XCTUnwrap(loop.aborted).rank
    let said = "\(try XCTUnwrap(failures.get(first), "rank \(first) ended the job without an error"))"
    XCTAssertTrue(said.contains("resumed their models at different steps"), said)
    for model in ["m000", "m001", "m002", "m003"] {
      let units = try FileManager.default.contentsOfDirectory(atPath: output + "/checkpoints/" + model)
      XCTAssertEqual(units.filter { $0.hasPrefix("step-") }.max(), "step-00000004", "\(model): \(units)")
    }
  }

  /// Successive halving across ranks: the coordinator decides, the ranks holding a stopped or
  /// waiting model's shards let them go or move them off the device, and everything ends as the
  /// same job under shm (the same models stopped, the same bytes).
  func testLoopbackSuccessiveHalving() throws {
    let sha = [
      "train.steps=10", "selection.name=\"sha\"", "selection.min_steps=2", "selection.reduction_factor=2",
      "train.checkpoint_every=0", "train.eval_every=0",
    ]
    let reference = try reference(sha)
    let output = try temporaryFolder() + "/sha"
    let (result, summary) = try runLoopback(
      ranks: 3, output: output, overrides: sha + ["cluster.placement=\"by-shard\""])
    try assertSameCheckpoints(reference, output, "sha on 3 ranks")
    XCTAssertEqual(result.runs.filter { $0.status.isStopped }.count, 3)
    XCTAssertEqual(coordinator(summary)["tensors_left_over"] as? Int, 0)
  }

  /// A model that diverges stops alone, on every rank; the others end as under shm.
  func testLoopbackDivergingModel() throws {
    let diverge = ["sweep.train.lr=[3e-3, 1e9, 3e-4, 1e-2]"]
    let reference = try reference(diverge)
    let output = try temporaryFolder() + "/diverge"
    let (result, summary) = try runLoopback(
      ranks: 3, output: output, overrides: diverge + ["cluster.placement=\"by-shard\""])
    try assertSameCheckpoints(reference, output, "a diverging model")
    XCTAssertEqual(result.runs[1].status.name, "diverged")
    XCTAssertEqual(coordinator(summary)["tensors_left_over"] as? Int, 0)
  }

  /// A rank fails in the middle of training (a fault after its 5th task): it tells rank 0, and
  /// rank 0 ends the job with status 1.
  /// A scheduler plugin that fails mid-run (on rank 0, the coordinator) ends the job on every rank
  /// with its message, promptly, while tasks are out on other ranks.
  func testLoopbackSchedulerErrorEndsTheJob() throws {
    final class Failing: Scheduler, @unchecked Sendable {
      let name = "failing"
      let lrtf = LRTFScheduler()
      var calls = 0
      func schedule(_ view: SchedulerView) -> [Assignment] { lrtf.schedule(view) }
      func trySchedule(_ view: SchedulerView) throws -> [Assignment] {
        calls += 1
        if calls > 30 { throw SchedulerError("the failing scheduler gave up at decision 31") }
        return lrtf.schedule(view)
      }
    }
    let loop = Loopback(ranks: 3)
    let output = try temporaryFolder() + "/scheduler-error"
    let failures = ByRank<Error>()
    let start = Date()
    // Ending the job is an abort (under mpirun, MPI_Abort ends every process): the ranks' threads
    // stay where the abort found them, as in the other failure tests.
    let job = Thread {
      _ = try? self.runLoopback(
        ranks: 3, output: output, overrides: ["scheduler.name=\"failing\"", "cluster.placement=\"by-shard\""],
        loopback: loop,
        registry: {
          try PluginRegistry { b in
            try Builtins.register(into: &b)
            try b.registerScheduler("failing") { _, _ in Failing() }
          }
        }, failures: failures)
    }
    job.start()
    XCTAssertTrue(loop.waitForAbort(seconds: 60), "the job did not end")
    XCTAssertLessThan(Date().timeIntervalSince(start), 30, "the job ended promptly")
    let aborted = try XCTUnwrap(loop.aborted)
    XCTAssertEqual(aborted.rank, 0, "rank 0, the coordinator, ends the job")
    XCTAssertEqual(aborted.code, 1)
    // What rank 0's run threw (the tool prints it before its abort).
    let said = failures.get(0).map { "\($0)" } ?? ""
    XCTAssertTrue(said.contains("gave up at decision 31"), "rank 0 ended the job with: \(said)")
  }

  func testLoopbackRankFailingMidRunEndsTheJob() throws {
    let loop = Loopback(ranks: 3)
    let output = try temporaryFolder() + "/failing"
    let runtimes = ByRank<DistributedRuntime>()
    let job = Thread {
      _ = try? self.runLoopback(
        ranks: 3, output: output, overrides: ["cluster.placement=\"by-shard\""], loopback: loop
      ) { runtime in
        runtime.fault = (rank: 2, after: 5)
        runtime.receiveTimeout = 20
        runtimes.set(runtime.localDevice, runtime)
      }
    }
    job.start()
    XCTAssertTrue(loop.waitForAbort(seconds: 60), "the job did not end")
    let aborted = try XCTUnwrap(loop.aborted)
    XCTAssertEqual(aborted.code, 1)
    XCTAssertEqual(aborted.rank, 0, "rank 0 ends the job for the failing rank")
    let said = try XCTUnwrap(runtimes.get(0)?.endedWith)
    XCTAssertTrue(said.contains("rank 2 failed") && said.contains("a fault injected"), said)
    // Rank 0 also leaves the reason in the output folder (a launcher may lose what ranks print).
    let record = (try? String(contentsOfFile: output + "/failure.txt", encoding: .utf8)) ?? ""
    XCTAssertTrue(record.contains("rank 2 failed") && record.contains("a fault injected"), record)
  }

  /// A rank stops answering (its task never ends): after the rank timeout rank 0 ends the job,
  /// naming the rank and the task it held, instead of waiting for good.
  func testLoopbackRankThatStopsAnsweringIsNamed() throws {
    let loop = Loopback(ranks: 3)
    let output = try temporaryFolder() + "/stalled"
    let runtimes = ByRank<DistributedRuntime>()
    let start = Date()
    let job = Thread {
      _ = try? self.runLoopback(
        ranks: 3, output: output, overrides: ["cluster.placement=\"by-shard\""], loopback: loop
      ) { runtime in
        runtime.stall = (rank: 1, after: 4)
        // Tensor waits (on every rank) give up later than rank 0's check of the ranks, so that
        // what ends the job is rank 0 naming the rank, whatever the timing.
        runtime.receiveTimeout = 30
        runtime.rankTimeout = 2
        runtimes.set(runtime.localDevice, runtime)
      }
    }
    job.start()
    XCTAssertTrue(loop.waitForAbort(seconds: 60), "the job did not end")
    XCTAssertLessThan(Date().timeIntervalSince(start), 30)
    let aborted = try XCTUnwrap(loop.aborted)
    XCTAssertEqual(aborted.rank, 0)
    let said = try XCTUnwrap(runtimes.get(0)?.endedWith)
    XCTAssertTrue(said.contains("rank 1 stopped answering: it has not finished m00"), said)
  }
}

extension LoopbackTests {
  /// The first activation sent to rank 1 is lost on the way: the task waiting for it gives up after
  /// the receive timeout, naming the tensor, and rank 0 ends the job (not a hang, not a wrong
  /// result).
  func testLoopbackLostTensorIsNamed() throws {
    let loop = Loopback(ranks: 3)
    loop.lose = { key, _, destination in
      destination == 1 && key.kind == .activation
    }
    let output = try temporaryFolder() + "/lost"
    let runtimes = ByRank<DistributedRuntime>()
    let job = Thread {
      _ = try? self.runLoopback(
        ranks: 3, output: output, overrides: ["cluster.placement=\"by-shard\""], loopback: loop
      ) { runtime in
        // Only rank 1 (which loses the tensor) gives up soon: a rank waiting on rank 1 meanwhile
        // must not be the one that ends the job, however loaded the machine.
        runtime.receiveTimeout = runtime.localDevice == 1 ? 1 : 60
        runtime.rankTimeout = 120
        runtimes.set(runtime.localDevice, runtime)
      }
    }
    job.start()
    XCTAssertTrue(loop.waitForAbort(seconds: 60), "the job did not end")
    let aborted = try XCTUnwrap(loop.aborted)
    XCTAssertEqual(aborted.code, 1)
    XCTAssertEqual(aborted.rank, 0, "rank 0 ends the job")
    // Every activation sent to rank 1 is lost; the one named is one of them (whichever rank 1's
    // task waited for first), and one that was sent, not merely late.
    let lost = loop.lost
    XCTAssertFalse(lost.isEmpty)
    let said = try XCTUnwrap(runtimes.get(0)?.endedWith)
    XCTAssertTrue(said.contains("rank 1 failed"), said)
    XCTAssertTrue(
      lost.contains { said.contains("waited 1 s for \($0), which never arrived") }, "\(said); lost: \(lost)")
  }
}

extension LoopbackTests {
  /// A rank whose thread ends with an error calls `fail`: the other ranks' polls and collectives
  /// throw, naming it (so a harness's job ends at once instead of waiting out its limit), and the
  /// caller's thread goes on.
  func testLoopbackFailEndsTheOtherRanks() throws {
    let loop = Loopback(ranks: 3)
    let ranks = (0..<3).map { loop.transport(rank: $0) }
    try ranks[0].send(.control([7]), to: 1)
    XCTAssertEqual(try ranks[1].poll().count, 1)
    // Ranks 1 and 2 wait in a collective that rank 0 never joins; rank 0 fails instead.
    let waiting = ByRank<String>()
    let group = DispatchGroup()
    for r in 1...2 {
      group.enter()
      Thread {
        defer { group.leave() }
        do {
          _ = try ranks[r].allGather([UInt8(r)])
          waiting.set(r, "returned")
        } catch { waiting.set(r, "\(error)") }
      }.start()
    }
    Thread.sleep(forTimeInterval: 0.1)
    loop.fail(rank: 0, code: 2)
    XCTAssertEqual(group.wait(timeout: .now() + 10), .success, "the collective did not end")
    for r in 1...2 { XCTAssertEqual(waiting.get(r), "loopback: rank 0 aborted the job (code 2)") }
    XCTAssertThrowsError(try ranks[2].poll())
    XCTAssertEqual(loop.aborted?.rank, 0)
    XCTAssertEqual(loop.aborted?.code, 2)
  }
}

/// Values by rank, set from the ranks' threads (their outcomes, their runtimes).
final class ByRank<Value>: @unchecked Sendable {
  private let lock = NSLock()
  private var values: [Int: Value] = [:]
  func set(_ rank: Int, _ value: Value) {
    lock.lock()
    values[rank] = value
    lock.unlock()
  }
  func get(_ rank: Int) -> Value? {
    lock.lock()
    defer { lock.unlock() }
    return values[rank]
  }
}

/// The first value set, kept (the first rank to fail, say).
final class FirstValue<Value>: @unchecked Sendable {
  private let lock = NSLock()
  private var _value: Value?
  func setIfEmpty(_ value: Value) {
    lock.lock()
    if _value == nil { _value = value }
    lock.unlock()
  }
  var value: Value? {
    lock.lock()
    defer { lock.unlock() }
    return _value
  }
}

extension LoopbackTests {
  /// Not a test but a measurement (opt-in: `HYDRA_SHM_TRANSPORT_REPS=n`): what `shm` would cost as a
  /// `Transport`, that is the distributed runtime with one in-process rank per device, against the
  /// `shm` backend, on the scheduling benchmark's job (8 GPTs, 4 shards each, 2 devices, 1 thread
  /// each, `Scripts/bench-schedulers`). Loopback ranks that copy tensors (as processes must) and
  /// that hand them over by reference (as threads sharing memory could). Prints the median makespan
  /// of n runs of each, in turn, their ratio to shm, the shard moves and the host memory the ranks
  /// held together. Also checks that every layout ends with shm's checkpoints.
  func testLoopbackAsShmTransportTiming() throws {
    guard let reps = ProcessInfo.processInfo.environment["HYDRA_SHM_TRANSPORT_REPS"].flatMap(Int.init), reps > 0
    else { throw XCTSkip("set HYDRA_SHM_TRANSPORT_REPS=n to measure shm against in-process transports") }
    let steps = ProcessInfo.processInfo.environment["HYDRA_SHM_TRANSPORT_STEPS"].flatMap(Int.init) ?? 20
    let folder = try temporaryFolder()
    let job = folder + "/job.toml"
    try """
    [job]
    name = "shm-transport"
    output = "out"
    seed = 3
    [cluster]
    devices = 2
    threads_per_device = 1
    [data]
    format = "text"
    path = "\(repositoryRoot)/Examples/data/fortunes.txt"
    [model]
    kind = "gpt"
    layers = 4
    d_model = 128
    heads = 4
    context = 64
    [train]
    steps = \(steps)
    batch_size = 16
    eval_every = 0
    eval_batches = 1
    [sweep]
    "train.lr" = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3, 8e-3]
    [partitioner]
    name = "fixed"
    boundaries = [2, 3, 4]
    [scheduler]
    name = "lrtf"
    """.write(toFile: job, atomically: true, encoding: .utf8)
    func figures(_ output: String) throws -> (makespan: Double, hostBytes: Int, moves: Int) {
      let data = try Data(contentsOf: URL(fileURLWithPath: output + "/summary.json"))
      let s = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
      let memory = try XCTUnwrap(s["memory"] as? [String: Any])
      let store = try XCTUnwrap((memory["host_store"] as? [String: Any])?["peak_bytes"] as? Int)
      let others = (memory["devices"] as? [[String: Any]] ?? []).compactMap { $0["host_store_peak_bytes"] as? Int }
      return (
        try XCTUnwrap(s["makespan_seconds"] as? Double), store + others.reduce(0, +),
        (s["coordinator"] as? [String: Any])?["shard_moves"] as? Int ?? 0
      )
    }
    var rows: [String: [(makespan: Double, hostBytes: Int, moves: Int)]] = [:]
    var shmOutput = ""
    for rep in 0..<reps {
      let shm = folder + "/shm-\(rep)"
      _ = try runJob(job, overrides: ["cluster.backend=\"shm\"", "job.output=\"\(shm)\""])
      rows["shm", default: []].append(try figures(shm))
      shmOutput = shm
      for copies in [true, false] {
        let label = copies ? "loopback, copies" : "loopback, by reference"
        let output = folder + "/\(copies ? "copies" : "refs")-\(rep)"
        _ = try runLoopback(
          ranks: 2, output: output, overrides: ["cluster.devices=1"],
          loopback: Loopback(ranks: 2, copies: copies), job: job)
        rows[label, default: []].append(try figures(output))
        try assertSameCheckpoints(shmOutput, output, label)
      }
    }
    func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
    let base = median(rows["shm"]!.map(\.makespan))
    print("shm as a transport: 8 GPTs x 4 shards, 2 devices x 1 thread, \(steps) steps, lrtf; medians of \(reps)")
    for label in ["shm", "loopback, copies", "loopback, by reference"] {
      let r = rows[label]!
      print(
        String(
          format: "  %@ makespan %7.3f s  ratio to shm %.3f  host store peaks (all ranks) %6.1f MB  shard moves %d",
          label.padding(toLength: 24, withPad: " ", startingAt: 0), median(r.map(\.makespan)),
          median(r.map(\.makespan)) / base,
          median(r.map { Double($0.hostBytes) }) / 1e6, r.map(\.moves).sorted()[r.count / 2]))
    }
  }
}
