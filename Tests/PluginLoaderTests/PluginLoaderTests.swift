import Foundation
import HydraBuiltins
import HydraRuntime
import XCTest

@testable import HydraPluginLoader

/// Shortest remaining time first, written again in Swift from its definition: the oracle for the
/// C example (Examples/Plugins/srtf-c).
final class SwiftSRTF: Scheduler {
  let name = "swift-srtf"
  func schedule(_ view: SchedulerView) -> [Assignment] {
    var taken = Set<Int>()
    var out: [Assignment] = []
    for d in view.freeDevices {
      let candidates = view.ready.indices.filter {
        !taken.contains($0) && (view.ready[$0].allowedDevices?.contains(d) ?? true)
      }
      guard
        let best = candidates.min(by: {
          (view.ready[$0].remainingSeconds, view.ready[$0].task.model)
            < (view.ready[$1].remainingSeconds, view.ready[$1].task.model)
        })
      else { continue }
      taken.insert(best)
      out.append(Assignment(task: view.ready[best].task, device: d))
    }
    return out
  }
}

final class PluginHeaderTests: XCTestCase {
  func testEmbeddedHeaderIsTheHeaderFileByteForByte() throws {
    let file = try String(contentsOfFile: headerFolder + "/hydra_plugin.h", encoding: .utf8)
    XCTAssertEqual(PluginHeader.text, file, "run Scripts/embed-plugin-header")
    XCTAssertTrue(PluginHeader.text.contains("#define HYDRA_PLUGIN_ABI_VERSION \(PluginLoader.abiVersion)\n"))
  }
}

final class SchedulerPluginTests: XCTestCase {
  func srtf() throws -> (Scheduler, String) {
    let library = try buildLibrary("srtf", file: "Examples/Plugins/srtf-c/srtf.c", in: try temporaryFolder(self))
    let registry = try Builtins.registry(loading: [library])
    XCTAssertEqual(registry.origin(.scheduler, "srtf")?.file, library)
    XCTAssertNil(registry.origin(.scheduler, "lrtf"))
    return (try registry.makeScheduler("srtf", options: [:], seed: 1), library)
  }

  /// Three one-shard models of 2, 4 and 6 seconds (forward = backward) on one device: SRTF runs
  /// them shortest first, each to its end (lrtf would start with the longest).
  func testCSRTFOnOneDeviceRunsShortestModelFirst() throws {
    let (scheduler, _) = try srtf()
    let models = [3.0, 1.0, 2.0].map { SimulatedModel(steps: 1, forwardSeconds: [$0], backwardSeconds: [$0]) }
    let r = try simulate(models, devices: 1, scheduler: scheduler)
    XCTAssertEqual(
      r.intervals.map { "\($0.task) \($0.start)-\($0.end)" },
      [
        "m1 s0 fwd @0 0.0-1.0", "m1 s0 bwd @0 1.0-2.0", "m2 s0 fwd @0 2.0-4.0", "m2 s0 bwd @0 4.0-6.0",
        "m0 s0 fwd @0 6.0-9.0", "m0 s0 bwd @0 9.0-12.0",
      ])
  }

  /// The same models on two devices, worked by hand: 0: m1 fwd [0,1], m1 bwd [1,2], m2 bwd [2,4],
  /// m0 bwd [5,8]; 1: m2 fwd [0,2], m0 fwd [2,5]. Makespan 8.
  func testCSRTFOnTwoDevicesGivesTheHandWorkedSchedule() throws {
    let (scheduler, _) = try srtf()
    let models = [3.0, 1.0, 2.0].map { SimulatedModel(steps: 1, forwardSeconds: [$0], backwardSeconds: [$0]) }
    let r = try simulate(models, devices: 2, scheduler: scheduler)
    XCTAssertEqual(r.makespan, 8)
    XCTAssertEqual(
      r.intervals(device: 0).map { "\($0.task) \($0.start)-\($0.end)" },
      ["m1 s0 fwd @0 0.0-1.0", "m1 s0 bwd @0 1.0-2.0", "m2 s0 bwd @0 2.0-4.0", "m0 s0 bwd @0 5.0-8.0"])
    XCTAssertEqual(
      r.intervals(device: 1).map { "\($0.task) \($0.start)-\($0.end)" },
      ["m2 s0 fwd @0 0.0-2.0", "m0 s0 fwd @0 2.0-5.0"])
  }

  /// A job of many shards and uneven times: the C scheduler's schedule is the Swift oracle's, task
  /// for task; and what a decision costs through the C ABI (printed).
  func testCSRTFMatchesSwiftSRTFAndCostsLittlePerDecision() throws {
    let (scheduler, _) = try srtf()
    var generator = SplitMix(seed: 5)
    let models = (0..<16).map { _ in
      SimulatedModel(
        steps: 40, forwardSeconds: (0..<4).map { _ in generator.nextDouble() + 0.1 },
        backwardSeconds: (0..<4).map { _ in 2 * generator.nextDouble() + 0.2 })
    }
    let c = try simulate(models, devices: 4, scheduler: scheduler)
    let swift = try simulate(models, devices: 4, scheduler: SwiftSRTF())
    XCTAssertEqual(c.intervals, swift.intervals)
    XCTAssertEqual(c.makespan, swift.makespan)
    let lrtf = try Builtins.registry().makeScheduler("lrtf", options: [:], seed: 1)
    XCTAssertNotEqual(try simulate(models, devices: 4, scheduler: lrtf).intervals, c.intervals)

    func microseconds(_ s: Scheduler) throws -> Double {
      var best = Double.infinity
      for _ in 0..<5 {
        let start = DispatchTime.now().uptimeNanoseconds
        let r = try simulate(models, devices: 4, scheduler: s)
        best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e3 / Double(r.decisions))
      }
      return best
    }
    print(
      String(
        format:
          "per decision (simulate, 16 models x 4 shards x 40 steps, 4 devices, %d decisions, whole simulator step): C srtf %.2f us, Swift srtf %.2f us, built-in lrtf %.2f us",
        c.decisions, try microseconds(scheduler), try microseconds(SwiftSRTF()), try microseconds(lrtf)))
  }

  func testCSRTFRefusesOptionsAsTheUsersMistake() throws {
    let library = try buildLibrary("srtf", file: "Examples/Plugins/srtf-c/srtf.c", in: try temporaryFolder(self))
    let registry = try Builtins.registry(loading: [library])
    XCTAssertThrowsError(try registry.makeScheduler("srtf", options: ["depth": .int(2)], seed: 1)) {
      XCTAssertTrue($0 is SchedulerError, "\($0)")
      XCTAssertTrue("\($0)".contains("takes no options; found \"depth\""), "\($0)")
      XCTAssertTrue("\($0)".contains(library), "\($0)")
    }
  }

  /// Each misbehaving scheduler stops the simulation with a `PluginError` naming file, plugin and problem.
  func testGarbageAnswersAndErrorsArePluginErrorsNamingTheFile() throws {
    let library = try buildLibrary("garbage", file: "Tests/plugins/garbage.c", in: try temporaryFolder(self))
    let registry = try Builtins.registry(loading: [library])
    let models = [SimulatedModel(steps: 1, forwardSeconds: [1], backwardSeconds: [1])]
    for (name, expected) in [
      ("garbage-task", "assigned ready task 6, but only 1 are ready (indices 0..<1)"),
      ("garbage-device", "assigned device 99, but the job has 2 devices (0..<2)"),
      ("failing", "schedule failed (code 2): deliberate failure with 1 task(s) ready"),
    ] {
      let s = try registry.makeScheduler(name, options: [:], seed: 0)
      XCTAssertThrowsError(try simulate(models, devices: 2, scheduler: s)) { error in
        XCTAssertTrue(error is PluginError, "\(error)")
        XCTAssertEqual("\(error)", "plugin \(library): scheduler \"\(name)\": \(expected)")
      }
    }
  }
}

/// A small splittable generator for the test's task times.
struct SplitMix {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
  mutating func nextDouble() -> Double { Double(next() >> 11) / Double(1 << 53) }
}

final class LoaderErrorTests: XCTestCase {
  func loadError(_ paths: [String]) -> String {
    do {
      _ = try Builtins.registry(loading: paths)
      return "loaded"
    } catch let e as InputError {
      return e.description
    } catch {
      return "not an InputError: \(error)"
    }
  }

  func testEveryBadLibraryIsBadInputNamingItsFile() throws {
    let folder = try temporaryFolder(self)
    let abi = try buildLibrary("abi999", file: "Tests/plugins/abi999.c", in: folder)
    XCTAssertEqual(
      loadError([abi]),
      "\(abi): built for plugin ABI version 999, but this hydra-mpi speaks ABI versions 1 to 2; rebuild the plugin against the header `hydra-mpi plugins --header` prints"
    )
    let noEntry = try buildLibrary("no-entry", file: "Tests/plugins/no-entry.c", in: folder)
    XCTAssertTrue(loadError([noEntry]).hasPrefix("\(noEntry): not a hydra-mpi plugin: it exports no"))
    XCTAssertEqual(loadError([folder + "/missing.so"]), "\(folder)/missing.so: plugin library: no such file")
    try "not a library".write(toFile: folder + "/text.so", atomically: true, encoding: .utf8)
    XCTAssertTrue(loadError([folder + "/text.so"]).hasPrefix("\(folder)/text.so: cannot be loaded as a shared library"))
    let clash = try buildLibrary("clash", file: "Tests/plugins/clash.c", in: folder)
    XCTAssertEqual(
      loadError([clash]), "\(clash): scheduler \"lrtf\" is already registered (built in); choose another name")
  }

  /// Two libraries registering one name: the second is refused, naming the first; and nothing of
  /// the refused library is registered.
  func testANameFromAnEarlierLibraryClashes() throws {
    let first = try buildLibrary("srtf", file: "Examples/Plugins/srtf-c/srtf.c", in: try temporaryFolder(self))
    let second = try buildLibrary("srtf", file: "Examples/Plugins/srtf-c/srtf.c", in: try temporaryFolder(self))
    XCTAssertEqual(
      loadError([first, second]),
      "\(second): scheduler \"srtf\" is already registered by the plugin library \(first); choose another name")
    XCTAssertEqual(try Builtins.registry(loading: [first]).loaded.map(\.name), ["srtf"])
  }
}

final class PartitionerPluginTests: XCTestCase {
  /// Three blocks whose footprints are not sums (a shared workspace, activations across boundaries).
  let request = PartitionRequest(
    blocks: [
      BlockCosts(
        parameterBytes: 100, activationBytesPerSample: 10, forwardWorkspace: ["a": 3], workspace: ["dx": 8, "a": 5],
        forwardFlopsPerSample: 1000),
      BlockCosts(
        parameterBytes: 200, replicaBytes: 7, activationBytesPerSample: 20, workspace: ["dx": 16],
        forwardFlopsPerSample: 3000),
      BlockCosts(parameterBytes: 300, activationBytesPerSample: 30, workspace: ["dx": 4], forwardFlopsPerSample: 500),
    ], blockNames: ["wte", "h.0", "head"], batchSize: 4, stateCopies: 2, budget: 1 << 20, doubleBuffering: true,
    options: ["cut": .int(1)])

  func testCPartitionerSeesTheHostsFootprintsAndCosts() throws {
    let library = try buildLibrary("probe", file: "Tests/plugins/probe.c", in: try temporaryFolder(self))
    let p = try Builtins.registry(loading: [library]).makePartitioner("probe")
    XCTAssertThrowsError(try p.partition(request)) { error in
      guard let e = error as? PartitionError else { return XCTFail("\(error)") }
      XCTAssertEqual(e.key, "partitioner.name")
      let seconds = request.seconds(0..<3)
      XCTAssertEqual(
        e.message,
        "partitioner \"probe\" (plugin \(library)): footprint(0,2)=\(request.footprint(0..<2)) footprint(1,3)=\(request.footprint(1..<3)) footprint(-1,2)=-1 seconds(0,3)=\(seconds) shard_budget=\(1 << 19) blocks=3 state_bytes[1]=\(200 * 4 + 14) name[2]=head options=1"
      )
    }
  }

  func testShardsThatDoNotCoverTheModelAreAPluginError() throws {
    let library = try buildLibrary("probe", file: "Tests/plugins/probe.c", in: try temporaryFolder(self))
    let p = try Builtins.registry(loading: [library]).makePartitioner("bad-ends")
    XCTAssertThrowsError(try p.partition(request)) {
      XCTAssertEqual(
        "\($0)", "plugin \(library): partitioner \"bad-ends\": shards end at block 2, but the model has 3 blocks")
    }
  }
}

final class TransportPluginTests: XCTestCase {
  func transport(_ name: String) throws -> (DistributedRuntime, String) {
    let library = try buildLibrary("loopback", file: "Tests/plugins/loopback.c", in: try temporaryFolder(self))
    let registry = try Builtins.registry(loading: [library])
    // The runtime's start all-gathers through the plugin already.
    let runtime = try XCTUnwrap(try registry.makeBackend(name, devices: 1) as? DistributedRuntime)
    return (runtime, library)
  }

  func testMessagesCrossTheCABIIntact() throws {
    let (runtime, _) = try transport("loop")
    defer { runtime.close() }
    let t = runtime.transport
    XCTAssertEqual([t.rank, t.size], [0, 1])
    XCTAssertEqual(t.hostName, "loopback")
    XCTAssertEqual(try t.allGather([1, 2, 3]), [[1, 2, 3]])
    let values: [Float] = [1.5, -0, .nan, 3e-38, 7, 8]
    try t.send(.control([9, 8, 7]), to: 0)
    try t.send(
      .tensor(MessageKey(.gradient, model: 3, index: 2, step: 11), try Tensor(shape: [2, 3], values: values)), to: 0)
    XCTAssertTrue(t.isIdle == false)
    let got = try t.poll()
    XCTAssertTrue(t.isIdle)
    XCTAssertEqual(got.count, 2)
    guard case .control(let bytes) = got[0].message else { return XCTFail("\(got)") }
    XCTAssertEqual(bytes, [9, 8, 7])
    guard case .tensor(let key, let tensor) = got[1].message else { return XCTFail("\(got)") }
    XCTAssertEqual(key, MessageKey(.gradient, model: 3, index: 2, step: 11))
    XCTAssertTrue(tensor.bitwiseEqual(try Tensor(shape: [2, 3], values: values)))
  }

  func testAnOverflowingShapeFromThePluginIsAnErrorNotACrash() throws {
    let (runtime, library) = try transport("loop-bad-shape")
    defer { runtime.close() }
    try runtime.transport.send(
      .tensor(MessageKey(.activation, model: 0, index: 0, step: 0), try Tensor(shape: [1])), to: 0)
    XCTAssertThrowsError(try runtime.transport.poll()) {
      XCTAssertEqual(
        "\($0)",
        "plugin \(library): transport \"loop-bad-shape\": poll failed (code 2): delivered a tensor of shape [1099511627776, 1099511627776]: too many values"
      )
    }
  }

  func testAFailedSendIsAPluginErrorNamingTheFile() throws {
    let (runtime, library) = try transport("fail-send")
    defer { runtime.close() }
    XCTAssertThrowsError(try runtime.transport.send(.control([1]), to: 0)) {
      XCTAssertEqual(
        "\($0)",
        "plugin \(library): transport \"fail-send\": send to rank 0 failed (code 2): deliberate send failure to rank 0")
    }
    XCTAssertThrowsError(try runtime.transport.send(.control([1]), to: 1)) {
      XCTAssertTrue("\($0)".hasSuffix("send to rank 1 of 1"), "\($0)")
    }
  }
}
