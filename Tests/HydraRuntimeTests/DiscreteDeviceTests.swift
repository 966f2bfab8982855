import Foundation
import HydraConfig
import HydraCore
import HydraKernelsDiscrete
import HydraPluginAPI
import XCTest

@testable import HydraRuntime

/// The `discrete` kernels keep device memory the host cannot touch: the runtime must reach it only
/// through the plugin's copies. Under them every job ends bit for bit as under `cpu` (the
/// exactness invariant: the kernels' memory changes where bytes live, never what is computed), a
/// direct access by the host is a fault, and the copies are exactly those the design calls for.
final class DiscreteDeviceTests: XCTestCase {
  override func setUp() { Coordinator.checksReadyIndex = true }
  override func tearDown() { Coordinator.checksReadyIndex = false }

  // MARK: The host cannot touch device memory

  /// Runs `body` in a child process; returns the signal that ended it (0 if it exited).
  func signalEnding(_ body: () -> Void) -> Int32 {
    let pid = fork()
    if pid == 0 {
      // The default action, at once: no backtracer, no core file.
      signal(SIGSEGV, SIG_DFL)
      var none = rlimit(rlim_cur: 0, rlim_max: 0)
      setrlimit(Int32(RLIMIT_CORE.rawValue), &none)
      body()
      _exit(0)
    }
    var status: Int32 = 0
    XCTAssertEqual(waitpid(pid, &status, 0), pid)
    return status & 0x7f
  }

  func testAHostAccessToDeviceMemoryFaultsAndThePluginsCopiesDoNot() throws {
    let kernels = DiscreteKernels(threads: 1, memory: DeviceMemory(label: "device 0"))
    let onDevice = try Tensor(shape: [4], values: [1, 2, 3, 4], memory: kernels.memory)
    XCTAssertTrue(onDevice.deviceBuffers === kernels.arena)
    XCTAssertTrue(kernels.arena.contains(onDevice.data))
    // Through the plugin: a copy each way, and a kernel computing in place.
    XCTAssertEqual(onDevice.array, [1, 2, 3, 4])
    kernels.scale(onDevice.data, by: 2, count: 4)
    XCTAssertEqual(onDevice.array, [2, 4, 6, 8])
    XCTAssertEqual(kernels.arena.traffic.hostToDeviceCopies, 1)
    XCTAssertEqual(kernels.arena.traffic.deviceToHostCopies, 2)
    XCTAssertEqual(kernels.arena.traffic.deviceToHostBytes, 32)
    // Directly, as the runtime did before device buffers: a read, a write, a memcpy all fault.
    XCTAssertEqual(signalEnding { _exit(onDevice.data.pointee == 2 ? 3 : 4) }, SIGSEGV, "a direct read")
    XCTAssertEqual(signalEnding { onDevice.data[1] = 0 }, SIGSEGV, "a direct write")
    XCTAssertEqual(
      signalEnding {
        var out = [Float](repeating: 0, count: 4)
        out.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: onDevice.data, byteCount: 16) }
        _exit(out[0] == 2 ? 3 : 4)
      }, SIGSEGV, "a memcpy")
    // The control: the same child reading a host tensor lives (so the deaths above are the faults).
    let onHost = try Tensor(shape: [4], values: [1, 2, 3, 4])
    XCTAssertEqual(signalEnding { _exit(onHost.data.pointee == 1 ? 0 : 4) }, 0)
    // And the values were never changed by the children.
    XCTAssertEqual(onDevice.array, [2, 4, 6, 8])
  }

  // MARK: Exactness against cpu

  func gptSweep(_ dir: String) throws -> String {
    let data = dir + "/text.txt"
    try String(repeating: "the device owns its memory; the host asks. ", count: 200).write(
      toFile: data, atomically: true, encoding: .utf8)
    return try writeJob(
      dir,
      """
      [job]
      name = "discrete-gpt"
      output = "out"
      seed = 5
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
      steps = 3
      batch_size = 4
      weight_decay = 0.1
      warmup_steps = 1
      eval_every = 2
      eval_batches = 2
      [sweep]
      "train.lr" = [3e-3, 1e-3]
      """)
  }

  func mlpJob(_ dir: String, steps: Int = 4) throws -> String {
    try writeJob(
      dir,
      """
      [job]
      name = "discrete-mlp"
      output = "out"
      [cluster]
      kernels = "cpu"
      [data]
      format = "csv"
      path = "\(repositoryRoot)/Examples/data/digits.csv.gz"
      feature_scale = 0.0625
      [model]
      kind = "mlp"
      hidden = [32, 24, 16]
      classes = 10
      [train]
      steps = \(steps)
      batch_size = 8
      optimizer = "sgd"
      lr = 0.05
      weight_decay = 0.01
      eval_every = 0
      eval_batches = 2
      """)
  }

  /// The bytes of every model's last checkpoint (weights and optimizer state), by model and file.
  func checkpoints(_ result: JobRunner.Result) throws -> [String: Data] {
    var out: [String: Data] = [:]
    for run in result.runs {
      let unit = result.output + "/checkpoints/\(run.id)/" + Checkpoint.unitName(run.step)
      for file in [Checkpoint.weightsFile, Checkpoint.optimizerFile] {
        out["\(run.id)/\(file)"] = try Data(contentsOf: URL(fileURLWithPath: unit + "/" + file))
      }
    }
    return out
  }

  func evaluations(_ result: JobRunner.Result) -> [String: [UInt64]] {
    Dictionary(uniqueKeysWithValues: result.runs.map { ($0.id, $0.evaluations.map(\.loss.bitPattern)) })
  }

  /// Every variant under `discrete` against the job under `cpu`, all resident on one device.
  func checkAgainstCPU(_ job: String, variants: [[String]]) throws {
    let baseline = try runJob(job, overrides: ["scheduler.name=\"sequential\""])
    XCTAssertTrue(baseline.runs.allSatisfy { $0.shards.count == 1 })
    let expected = try checkpoints(baseline)
    let expectedEvaluations = evaluations(baseline)
    XCTAssertFalse(expected.isEmpty)
    for overrides in variants {
      let result = try runJob(job, overrides: ["cluster.kernels=\"discrete\""] + overrides)
      let label = "\(overrides)"
      XCTAssertTrue(result.devices.allSatisfy { $0.kernels is DiscreteKernels }, label)
      XCTAssertEqual(try checkpoints(result), expected, label)
      XCTAssertEqual(evaluations(result), expectedEvaluations, label)
      // Bytes did cross, both ways, on every device that ran a task.
      let traffic = result.devices.map { ($0.kernels as! DiscreteKernels).arena.traffic }
      XCTAssertTrue(traffic.contains { $0.hostToDeviceBytes > 0 && $0.deviceToHostBytes > 0 }, label)
      if overrides.contains("cluster.host_memory=1") {
        XCTAssertGreaterThan(result.store.bytesWritten, 0, "\(label): nothing went to disk")
      }
    }
  }

  func testGPTUnderDiscreteShardedSpilledAndRecomputedIsBitwiseCPU() throws {
    let dir = try temporaryFolder()
    try checkAgainstCPU(try gptSweep(dir), variants: [[]] + shardingVariants(budget: "600KiB", half: "300KiB"))
  }

  func testMLPUnderDiscreteShardedSpilledAndRecomputedIsBitwiseCPU() throws {
    let dir = try temporaryFolder()
    try checkAgainstCPU(try mlpJob(dir), variants: shardingVariants(budget: "80KiB", half: "44KiB"))
  }

  func testEverySchedulerOnSeveralDiscreteDevicesIsBitwiseCPU() throws {
    let dir = try temporaryFolder()
    var variants: [[String]] = []
    for scheduler in SchedulingTests.schedulers {
      for devices in [2, 3] {
        variants.append(
          ["scheduler.name=\"\(scheduler)\"", "cluster.devices=\(devices)", "cluster.device_memory=400KiB"])
      }
    }
    variants.append(["cluster.devices=2", "cluster.device_memory=400KiB", "cluster.host_memory=1"])
    try checkAgainstCPU(try gptSweep(dir), variants: variants)
  }

  // MARK: The copies, counted

  /// summary.json reports each device's copies as the plugin counted them; `cpu` copies nothing.
  func testSummaryReportsTheBytesCopiedEachWayPerDevice() throws {
    let dir = try temporaryFolder()
    let job = try gptSweep(dir)
    func reported(_ result: JobRunner.Result) throws -> [[String: Any]] {
      let summary =
        try JSONSerialization.jsonObject(
          with: Data(contentsOf: URL(fileURLWithPath: result.output + "/summary.json"))) as! [String: Any]
      return (summary["memory"] as! [String: Any])["devices"] as! [[String: Any]]
    }
    let discrete = try runJob(job, overrides: ["cluster.kernels=\"discrete\"", "cluster.devices=2"])
    let devices = try reported(discrete)
    XCTAssertEqual(devices.count, 2)
    for (d, device) in zip(discrete.devices, devices) {
      let traffic = (d.kernels as! DiscreteKernels).arena.traffic
      XCTAssertGreaterThan(traffic.hostToDeviceBytes, 0)
      XCTAssertEqual(device["host_to_device_bytes"] as? Int, traffic.hostToDeviceBytes)
      XCTAssertEqual(device["device_to_host_bytes"] as? Int, traffic.deviceToHostBytes)
    }
    for device in try reported(try runJob(job, overrides: ["cluster.devices=2"])) {
      XCTAssertEqual(device["host_to_device_bytes"] as? Int, 0)
      XCTAssertEqual(device["device_to_host_bytes"] as? Int, 0)
    }
  }

  /// One step of a two-layer mlp, one layer per shard, on one unlimited device (so states are
  /// promoted once and never spilled), then its evaluation (one batch) and its checkpoint. With
  /// F = 64 features, H = 12 hidden, C = 10 classes, B = 8 rows, SGD (one state tensor per
  /// parameter), P0 = H F + H and P1 = C H + C floats of parameters per shard:
  ///
  /// | task | host -> device | device -> host |
  /// | --- | --- | --- |
  /// | fwd s0 | state of s0: value and momentum of W0 and b0 (4 copies, 2 P0; the gradients arrive zero, not copied); the features (B F) | kept for the backward: features, pre-activation, output (3: B F + 2 B H); the activation posted for s1 (B H) |
  /// | fwd s1 | state of s1 (4, 2 P1); the activation (B H) | kept: the logits (B C); the activation, again held for the backward (B H) |
  /// | bwd s1 | the logits (B C); the activation (B H) | the gradient posted for s0 (B H) |
  /// | bwd s0 | the kept three (3: B F + 2 B H); the gradient (B H) | |
  /// | eval s0 | the features (B F) | the activation for s1 (B H) |
  /// | eval s1 | the activation (B H) | |
  /// | checkpoint | | value and momentum of each parameter (8: 2 P0 + 2 P1) |
  ///
  /// In all, host -> device 18 copies of 2 P0 + 2 P1 + 3 B F + 6 B H + B C floats, device -> host
  /// 16 copies of 2 P0 + 2 P1 + B F + 6 B H + B C floats. Nothing device to device through the
  /// plugin's copies (the runtime's copies on a device are the `copy` kernel).
  func testTheCopiesOfASmallJobAreTheHandCount() throws {
    let dir = try temporaryFolder()
    let job = try writeJob(
      dir,
      """
      [job]
      name = "discrete-count"
      output = "out"
      [cluster]
      kernels = "discrete"
      activation_checkpointing = false
      [data]
      format = "csv"
      path = "\(repositoryRoot)/Examples/data/digits.csv.gz"
      feature_scale = 0.0625
      [model]
      kind = "mlp"
      hidden = [12]
      classes = 10
      [train]
      steps = 1
      batch_size = 8
      optimizer = "sgd"
      lr = 0.05
      eval_every = 0
      eval_batches = 1
      [partitioner]
      name = "fixed"
      blocks_per_shard = 1
      """)
    let result = try runJob(job)
    XCTAssertEqual(result.runs[0].shards.count, 2)
    XCTAssertEqual(result.runs[0].evaluations.count, 1)
    let (F, H, C, B) = (64, 12, 10, 8)
    let (P0, P1) = (H * F + H, C * H + C)
    let traffic = (result.devices[0].kernels as! DiscreteKernels).arena.traffic
    XCTAssertEqual(traffic.hostToDeviceCopies, 18, "\(traffic)")
    XCTAssertEqual(traffic.hostToDeviceBytes, 4 * (2 * P0 + 2 * P1 + 3 * B * F + 6 * B * H + B * C), "\(traffic)")
    XCTAssertEqual(traffic.deviceToHostCopies, 16, "\(traffic)")
    XCTAssertEqual(traffic.deviceToHostBytes, 4 * (2 * P0 + 2 * P1 + B * F + 6 * B * H + B * C), "\(traffic)")
    XCTAssertEqual(traffic.deviceToDeviceCopies, 0)
  }

  /// The same kind of job with a device that holds one shard's task at a time: every promotion
  /// of the other shard spills the one there (least recently used) to the host store's RAM. With
  /// F = 64, H = 32, C = 10, B = 2, SGD, V0 = 2 (H F + H) and V1 = 2 (C H + C) floats of a shard's
  /// value and momentum (4 copies; gradients arrive zero and leave uncopied); the budget is shard
  /// 0's footprint, its state plus a working set smaller than shard 1's state, so shard 1 never
  /// fits beside shard 0's state, nor shard 0's beside shard 1's. No double buffering.
  ///
  /// | when | host -> device | device -> host |
  /// | --- | --- | --- |
  /// | fwd s0 | promote s0 (V0) | |
  /// | fwd s1 | promote s1 (V1) | spill s0 (V0) |
  /// | bwd s1 | | |
  /// | bwd s0 | promote s0 (V0) | spill s1 (V1) |
  /// | eval s0, s1 | promote s1 (V1) | spill s0 (V0) |
  /// | checkpoint | | s1 leaves the device (V1); both read where the host store keeps them |
  ///
  /// States: host -> device 4 x 4 copies of 2 V0 + 2 V1 floats, device -> host 4 x 4 copies of
  /// 2 V0 + 2 V1. The tensors between tasks as in the job above: host -> device 10 copies of
  /// 3 B F + 6 B H + B C, device -> host 8 of B F + 6 B H + B C.
  func testTheCopiesOfPromotionAndSpillingAreTheHandCount() throws {
    let dir = try temporaryFolder()
    let text = { (budget: String) in
      """
      [job]
      name = "discrete-spill"
      output = "out"
      [cluster]
      kernels = "discrete"
      activation_checkpointing = false
      double_buffering = false
      device_memory = \(budget)
      [data]
      format = "csv"
      path = "\(repositoryRoot)/Examples/data/digits.csv.gz"
      feature_scale = 0.0625
      [model]
      kind = "mlp"
      hidden = [32]
      classes = 10
      [train]
      steps = 1
      batch_size = 2
      optimizer = "sgd"
      lr = 0.05
      eval_every = 0
      eval_batches = 1
      [partitioner]
      name = "fixed"
      blocks_per_shard = 1
      """
    }
    // The footprints, from a run on an unlimited device.
    let probe = try runJob(try writeJob(dir, text("\"1GiB\""), name: "probe.toml"))
    let footprints = probe.runs[0].footprints
    let (F, H, C, B) = (64, 32, 10, 2)
    let (V0, V1) = (2 * (H * F + H), 2 * (C * H + C))
    let state0 = 3 * (H * F + H) * 4, state1 = 3 * (C * H + C) * 4
    // The premises of the count: either shard's task fits alone, never beside the other's state.
    XCTAssertEqual(footprints.count, 2)
    XCTAssertGreaterThanOrEqual(footprints[0], footprints[1])
    XCTAssertLessThan(footprints[0] - state0, footprints[1], "shard 1's task would fit beside shard 0's state")
    XCTAssertLessThan(footprints[0] - state0, state1, "shard 1's state would fit beside shard 0's")
    let result = try runJob(try writeJob(dir, text("\(footprints[0])")))
    let traffic = (result.devices[0].kernels as! DiscreteKernels).arena.traffic
    XCTAssertEqual(traffic.hostToDeviceCopies, 16 + 10, "\(traffic)")
    XCTAssertEqual(traffic.hostToDeviceBytes, 4 * (2 * V0 + 2 * V1 + 3 * B * F + 6 * B * H + B * C), "\(traffic)")
    XCTAssertEqual(traffic.deviceToHostCopies, 16 + 8, "\(traffic)")
    XCTAssertEqual(traffic.deviceToHostBytes, 4 * (2 * V0 + 2 * V1 + B * F + 6 * B * H + B * C), "\(traffic)")
    XCTAssertEqual(result.store.bytesWritten, 0, "nothing went to disk")
  }
}

/// The distributed runtime under `discrete`: tensors leave a rank's device through its plugin's
/// copies before a transport sends them, arrive in host memory and go onto the next device the same
/// way; a pause and a resume load the checkpoint onto the devices. The bytes of `cpu` under shm.
extension LoopbackTests {
  func testLoopbackUnderDiscreteIsBitwiseCPUAndEveryRankReportsItsCopies() throws {
    let reference = try reference([])
    let root = try temporaryFolder()
    let discrete = ["cluster.kernels=\"discrete\""]
    for (ranks, scheduler) in [(1, "lrtf"), (3, "random"), (4, "round-robin")] {
      let label = "\(ranks) ranks, \(scheduler)"
      let output = root + "/\(ranks)-\(scheduler)"
      let (result, summary) = try runLoopback(
        ranks: ranks, output: output,
        overrides: discrete + ["scheduler.name=\"\(scheduler)\"", "cluster.placement=\"by-shard\""])
      try assertSameCheckpoints(reference, output, label)
      XCTAssertTrue(result.runs.allSatisfy { $0.status == .done && $0.step == 6 }, label)
      let devices = (summary["memory"] as? [String: Any])?["devices"] as? [[String: Any]] ?? []
      XCTAssertEqual(devices.count, ranks, label)
      // Every rank ran tasks (by-shard placement spreads every model's shards), so every rank's
      // report carries its copies both ways.
      for (d, device) in devices.enumerated() {
        XCTAssertGreaterThan(device["host_to_device_bytes"] as? Int ?? 0, 0, "\(label): device \(d)")
        XCTAssertGreaterThan(device["device_to_host_bytes"] as? Int ?? 0, 0, "\(label): device \(d)")
      }
    }
    let output = root + "/resumed"
    _ = try runLoopback(ranks: 2, output: output, overrides: discrete, pauseAt: 4)
    let (resumed, _) = try runLoopback(
      ranks: 3, output: output, overrides: discrete + ["scheduler.name=\"random\""], resume: true)
    XCTAssertTrue(resumed.runs.allSatisfy { $0.status == .done && $0.step == 6 })
    try assertSameCheckpoints(reference, output, "under discrete, paused on 2, resumed on 3", resumed: true)
  }
}
