import Foundation
import XCTest

@testable import HydraRuntime

/// The control messages of the distributed runtime: every case survives encoding with random
/// values (compared through Swift's own description of the values, not through the codec), and no
/// damaged message crashes the reader.
final class ControlMessageTests: XCTestCase {
  struct Random {
    var state: UInt64
    mutating func next() -> UInt64 {
      state &+= 0x9E37_79B9_7F4A_7C15
      var z = state
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
    mutating func int() -> Int {
      // Small, large and negative values alike.
      switch next() % 3 {
      case 0: return Int(next() % 100)
      case 1: return Int(truncatingIfNeeded: next())
      default: return -Int(next() % 1000)
      }
    }
    mutating func double() -> Double {
      next() % 5 == 0
        ? [Double.nan, .infinity, -0.0, .leastNonzeroMagnitude][Int(next() % 4)] : Double(bitPattern: next())
    }
    mutating func bool() -> Bool { next() % 2 == 0 }
    mutating func ints() -> [Int] { (0..<Int(next() % 6)).map { _ in int() } }
    mutating func string() -> String {
      String((0..<Int(next() % 40)).map { _ in ["a", "é", "\n", "\t", "\"", "𝔛", "0"][Int(next() % 7)] })
    }
    mutating func task() -> ShardTask {
      ShardTask(model: int(), shard: int(), direction: bool() ? .forward : .backward, step: int())
    }
    mutating func evaluation() -> Evaluation { Evaluation(step: int(), loss: double(), accuracy: double()) }
  }

  func messages(_ r: inout Random) -> [ControlMessage] {
    var report = DeviceReport(
      device: r.int(), peakBytes: r.int(), storePeakBytes: r.int(), bytesWrittenToDisk: r.int(),
      bytesReadFromDisk: r.int(), host: r.string())
    report.tensorsSent = r.int()
    report.bytesSent = r.int()
    report.leftOver = r.int()
    report.traffic.hostToDeviceCopies = r.int()
    report.traffic.hostToDeviceBytes = r.int()
    report.traffic.deviceToHostCopies = r.int()
    report.traffic.deviceToHostBytes = r.int()
    report.traffic.deviceToDeviceCopies = r.int()
    report.traffic.deviceToDeviceBytes = r.int()
    return [
      .run(r.task(), movedFrom: r.bool() ? abs(r.int() % 1000) : nil, homes: r.ints()),
      .done(r.task(), seconds: r.double(), loss: r.bool() ? r.double() : nil),
      .move(model: r.int(), shard: r.int(), step: r.int(), to: r.int()),
      .gather(model: r.int(), shard: r.int(), step: r.int(), valuesOnly: r.bool()),
      .drop(model: r.int(), step: r.int()),
      .stop,
      .bye(report),
      .fail(code: Int32(truncatingIfNeeded: r.int()), message: r.string()),
      .work(
        model: r.int(), step: r.int(), evaluate: r.bool(), checkpoint: r.bool(), homes: r.ints(),
        trainLosses: (0..<Int(r.next() % 5)).map { _ in r.double() },
        evaluations: (0..<Int(r.next() % 4)).map { _ in r.evaluation() }),
      .workDone(model: r.int(), evaluation: r.bool() ? r.evaluation() : nil, seconds: r.double()),
      .died(r.ints()),
      .settle(model: r.int(), release: r.bool()),
    ]
  }

  func testEveryMessageSurvivesEncodingWithRandomValues() throws {
    var r = Random(state: 2026)
    var kinds = Set<String>()
    for _ in 0..<300 {
      for m in messages(&r) {
        let back = try ControlMessage(decoding: m.encoded, from: 3)
        XCTAssertEqual(String(describing: back), String(describing: m))
        XCTAssertEqual(back, m)
        kinds.insert(String(String(describing: m).prefix { $0 != "(" }))
      }
    }
    XCTAssertEqual(kinds.count, 12, "\(kinds.sorted())")
  }

  /// A movedFrom of -1 is how the wire says "none": a real rank number must not be mistaken for it.
  func testAbsentValuesStayAbsent() throws {
    let task = ShardTask(model: 1, shard: 2, direction: .backward, step: 3)
    let m = ControlMessage.run(task, movedFrom: nil, homes: [0, 1])
    guard case .run(let t, let from, let homes) = try ControlMessage(decoding: m.encoded, from: 0) else {
      return XCTFail("not a run")
    }
    XCTAssertEqual(t, task)
    XCTAssertNil(from)
    XCTAssertEqual(homes, [0, 1])
    guard
      case .done(_, let seconds, let loss) = try ControlMessage(
        decoding: ControlMessage.done(task, seconds: 0.5, loss: nil).encoded, from: 0)
    else { return XCTFail("not done") }
    XCTAssertEqual(seconds, 0.5)
    XCTAssertNil(loss)
  }

  /// Every prefix of every message, an unknown kind and bytes beyond the end: an error naming the
  /// sender, never a crash; random bytes likewise.
  func testDamagedMessagesAreErrors() throws {
    var r = Random(state: 7)
    for m in messages(&r) {
      let bytes = m.encoded
      for n in 0..<bytes.count {
        XCTAssertThrowsError(try ControlMessage(decoding: Array(bytes.prefix(n)), from: 5)) { error in
          XCTAssertTrue("\(error)".contains("rank 5"), "\(error)")
        }
      }
      XCTAssertThrowsError(try ControlMessage(decoding: bytes + [0], from: 5))
    }
    XCTAssertThrowsError(try ControlMessage(decoding: [200], from: 1))
    // A count far beyond the message.
    var huge = ControlMessage.died([1]).encoded
    huge.replaceSubrange(1..<9, with: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
    XCTAssertThrowsError(try ControlMessage(decoding: huge, from: 1))
    for _ in 0..<20_000 {
      let bytes = (0..<Int(r.next() % 64)).map { _ in UInt8(truncatingIfNeeded: r.next() % 12) }
      _ = try? ControlMessage(decoding: bytes, from: 0)
    }
  }
}

/// The registry is built once; a name registered twice for one kind of plugin is an error that
/// names it, and the built-ins are what `job.toml` may name.
final class RegistryTests: XCTestCase {
  func testANameRegisteredTwiceIsAnError() {
    XCTAssertThrowsError(
      try PluginRegistry { r in
        try r.registerPartitioner("fixed") { fatalError("never made") }
        try r.registerPartitioner("fixed") { fatalError("never made") }
      }
    ) { error in XCTAssertTrue("\(error)".contains("partitioner \"fixed\" is registered twice"), "\(error)") }
    // The same name for two kinds is allowed.
    XCTAssertNoThrow(
      try PluginRegistry { r in
        try r.registerPartitioner("x") { fatalError("never made") }
        try r.registerBackend("x") { _ in fatalError("never made") }
      })
    let builtins = testRegistry()
    XCTAssertEqual(builtins.backendNames, ["mpi", "shm"])
    XCTAssertEqual(builtins.kernelsNames, ["cpu", "discrete", "reference"])
    XCTAssertEqual(builtins.partitionerNames, ["balanced", "fixed", "memory-greedy"])
    XCTAssertEqual(
      builtins.schedulerNames, ["fifo", "lrtf", "model-parallel", "planned", "random", "round-robin", "sequential"])
  }
}

/// Whether a lock's or a rank's process is alive: a zombie (killed, not reaped) is not.
final class ProcessLivenessTests: XCTestCase {
  func spawn(_ args: [String]) throws -> pid_t {
    var pid: pid_t = 0
    let argv = args.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let rc = posix_spawn(&pid, args[0], nil, nil, argv, environ)
    guard rc == 0 else { throw RuntimeError("posix_spawn \(args[0]): \(rc)") }
    return pid
  }

  func testZombiesAndReapedProcessesAreNotAlive() throws {
    XCTAssertTrue(isAlive(pid: getpid()))
    let sleeper = try spawn(["/bin/sleep", "30"])
    XCTAssertTrue(isAlive(pid: sleeper))
    kill(sleeper, SIGKILL)
    // Not reaped yet: a zombie, which kill(pid, 0) alone still finds.
    var waited = 0
    while waited < 100 {
      let stat = (try? String(contentsOfFile: "/proc/\(sleeper)/stat", encoding: .utf8)) ?? ""
      if stat.contains(") Z") { break }
      usleep(20_000)
      waited += 1
    }
    XCTAssertEqual(kill(sleeper, 0), 0, "the zombie is still there")
    XCTAssertFalse(isAlive(pid: sleeper))
    var status: Int32 = 0
    XCTAssertEqual(waitpid(sleeper, &status, 0), sleeper)
    XCTAssertFalse(isAlive(pid: sleeper))
    XCTAssertFalse(isAlive(pid: 0))
    XCTAssertFalse(isAlive(pid: -5))
  }
}

/// The one FLOPs-to-seconds estimate, against values worked out by hand.
final class TaskCostTests: XCTestCase {
  func testForwardBackwardAndStepSeconds() {
    let blocks = [10, 20].map { BlockCosts(parameterBytes: 0, activationBytesPerSample: 0, forwardFlopsPerSample: $0) }
    // (10 + 20) FLOPs per sample x 4 samples = 120 FLOPs forward; a backward is 240.
    XCTAssertEqual(TaskCost.forwardSeconds(blocks, batchSize: 4), 120)
    XCTAssertEqual(TaskCost.stepSeconds(blocks, batchSize: 4), 360)
    XCTAssertEqual(TaskCost.forwardSeconds(blocks, batchSize: 4, flopsPerSecond: 10), 12)
    let request = PartitionRequest(blocks: blocks, batchSize: 4, stateCopies: 2, budget: 1 << 30)
    XCTAssertEqual(request.seconds(0..<2), 360)
  }
}
