import Foundation
import HydraBackendSHM
import HydraConfig
import HydraCore
import HydraKernelsCPU
import HydraRuntime
import XCTest

/// The memory plan against what the runtime does: a shard's planned working set is what its tasks
/// allocate, to the byte, for every block kind and for shapes from tiny to GPT-2-small width; the
/// device budget a job needs does not grow with its number of models; a real-size sweep plans and
/// runs within 2 GiB devices.
final class MemoryPlanTests: XCTestCase {
  /// One training step (and an evaluation) of `spec` cut into `shards`, on a device with a working
  /// set and a host store: every shard's measured working set equals the plan's.
  func checkPlan(
    _ spec: ModelSpec, batch: Int, shards: [Range<Int>], checkpointing: Bool, hostMemory: Int = .max,
    file: StaticString = #filePath, line: UInt = #line
  ) throws {
    let device = DeviceMemory(budget: .max, label: "device 0")
    let kernels = CPUKernels(threads: 1, memory: DeviceMemory(workingSetOf: device))
    let store = HostStore(budget: hostMemory, folder: try temporaryFolder() + "/spill")
    store.attach(device: 0, memory: device)
    let request = spec.partitionRequest(
      batch: batch, stateCopies: 2, budget: .max, doubleBuffering: false, activationCheckpointing: checkpointing)
    let data: BatchSource =
      spec.isClassifier
      ? RandomTable(features: request.blocks.isEmpty ? 0 : inputs(of: spec), classes: classes(of: spec))
      : RandomTokens(vocab: vocab(of: spec), context: context(of: spec))
    let run = try ModelRun(
      index: 0, id: "m", spec: spec, seed: 3,
      settings: TrainSettings(
        steps: 2, batchSize: batch, evalBatches: 1, optimizer: Optimizer(kind: .adamw, lr: 1e-3, totalSteps: 2)),
      data: data, shards: shards, backend: SharedMemoryBackend(devices: 1), store: store,
      policy: ActivationPolicy(checkpointing: checkpointing, releaseBuffers: true),
      footprints: shards.map { request.footprint($0) }, workingSets: shards.map { request.workingSet($0) })
    while let task = run.nextTask { try run.run(task, kernels: kernels) }
    try run.evaluate(kernels: kernels)
    let label = "\(spec) batch \(batch) shards \(shards) checkpointing \(checkpointing)"
    XCTAssertEqual(run.measuredWorkingSets, run.workingSets, label, file: file, line: line)
    // The device's peak: the largest shard's state and working set at once, nothing more (the state
    // of the shard before it may still be there, evicted lazily: budget = .max here).
    XCTAssertLessThanOrEqual(
      device.peak, zip(shards, run.footprints).map { $1 }.reduce(0, +), label, file: file, line: line)
    XCTAssertEqual(store.heldEntries, 0, label, file: file, line: line)
    XCTAssertEqual(kernels.memory.used, 0, label, file: file, line: line)
  }

  func inputs(of spec: ModelSpec) -> Int { if case .mlp(let i, _, _) = spec { return i } else { return 0 } }
  func classes(of spec: ModelSpec) -> Int { if case .mlp(_, _, let c) = spec { return c } else { return 0 } }
  func vocab(of spec: ModelSpec) -> Int { if case .gpt(let s) = spec { return s.vocab } else { return 0 } }
  func context(of spec: ModelSpec) -> Int { if case .gpt(let s) = spec { return s.context } else { return 0 } }

  /// Every way to cut `n` blocks with at most 3 boundaries among the first few.
  func cuts(_ n: Int) -> [[Range<Int>]] {
    var out: [[Range<Int>]] = [[0..<n], (0..<n).map { $0..<$0 + 1 }]
    if n >= 3 {
      out.append([0..<1, 1..<n])
      out.append([0..<n - 1, (n - 1)..<n])
      out.append([0..<2, 2..<n])
    }
    return out
  }

  func testPlannedWorkingSetIsWhatEveryShardAllocates() throws {
    let specs: [(ModelSpec, Int)] = [
      (.gpt(GPTShape(layers: 2, channels: 16, heads: 2, context: 8, vocab: 64)), 4),
      // Odd sizes: nothing divides nicely.
      (.gpt(GPTShape(layers: 3, channels: 24, heads: 3, context: 7, vocab: 37)), 3),
      (.mlp(inputs: 13, hidden: [7, 29, 5], classes: 3), 5),
      (.mlp(inputs: 64, hidden: [], classes: 10), 8),
    ]
    for (spec, batch) in specs {
      for shards in cuts(spec.blockCount) {
        for checkpointing in [false, true] {
          try checkPlan(spec, batch: batch, shards: shards, checkpointing: checkpointing)
        }
      }
      // Everything kept between tasks on disk: the same allocations.
      try checkPlan(spec, batch: batch, shards: cuts(spec.blockCount)[1], checkpointing: false, hostMemory: 1)
    }
  }

  /// GPT-2 small's width, heads and vocabulary (one layer, short context): the head's logits over
  /// 50257 tokens and the tied embedding in transit are the largest tensors of a real model.
  func testPlannedWorkingSetAtGPT2SmallWidth() throws {
    let spec = ModelSpec.gpt(GPTShape(layers: 1, channels: 768, heads: 12, context: 32, vocab: 50257))
    try checkPlan(spec, batch: 2, shards: [0..<1, 1..<2, 2..<3], checkpointing: false)
    try checkPlan(spec, batch: 1, shards: [0..<2, 2..<3], checkpointing: true)
  }

  func sweepJob(_ dir: String, models: Int, extra: String = "") throws -> String {
    let lrs = (0..<models).map { "\(1e-4 * Double($0 + 1))" }.joined(separator: ", ")
    return try writeJob(
      dir,
      """
      [job]
      name = "many"
      output = "out"
      seed = 5
      [cluster]
      devices = 2
      device_memory = "64MiB"
      host_memory = "1GiB"
      \(extra)
      [data]
      format = "text"
      path = "\(repositoryRoot)/Examples/data/fortunes.txt"
      [model]
      kind = "gpt"
      layers = 2
      d_model = 32
      heads = 2
      context = 16
      [train]
      steps = 2
      batch_size = 4
      eval_every = 0
      eval_batches = 1
      [sweep]
      "train.lr" = [\(lrs)]
      """)
  }

  /// What a model keeps between its tasks waits in the host store, so 2 models and 256 need the
  /// same device budget: the same shards, the same footprints.
  func testTheDeviceBudgetDoesNotGrowWithTheSweep() throws {
    let dir = try temporaryFolder()
    func plans(_ models: Int) throws -> [JobRunner.Plan] {
      let config = try JobConfig.load(
        path: try sweepJob(dir, models: models, extra: "activation_checkpointing = false"), known: testKnownPlugins())
      return try JobRunner(config: config, registry: testRegistry()).plan()
    }
    let few = try plans(2), many = try plans(256)
    XCTAssertEqual(many.count, 256)
    for plan in many {
      XCTAssertEqual(plan.shards, few[0].shards)
      XCTAssertEqual(plan.shards.map(plan.request.footprint), few[0].shards.map(few[0].request.footprint))
    }
  }

  /// 256 small GPTs on 2 devices of 64 MiB each train, every one to the end, within the budgets.
  func test256ModelsOnTwoSmallDevices() throws {
    let dir = try temporaryFolder()
    let result = try runJob(try sweepJob(dir, models: 256))
    XCTAssertEqual(result.runs.count, 256)
    XCTAssertTrue(result.runs.allSatisfy { $0.status == .done && $0.step == 2 })
    for d in result.devices { XCTAssertLessThanOrEqual(d.memory.peak, 64 << 20) }
  }

  /// The real-size example: four GPT-2-small-shaped models on two 2 GiB devices. Its plan: every
  /// shard fits half a device (double buffering), and no model fits one device whole. One model of
  /// it trains a step here: each shard's tasks allocate exactly the planned working set, and the
  /// devices stay within 2 GiB (the full sweep runs in `Scripts/bench-gpt2`).
  func testTheGPT2SmallSweepPlansAndRunsWithinItsBudget() throws {
    let job = "\(repositoryRoot)/Examples/gpt2-sweep/job.toml"
    let dir = try temporaryFolder()
    let config = try JobConfig.load(path: job, known: testKnownPlugins(), overrides: ["job.output=\"\(dir)/plan\""])
    let runner = JobRunner(config: config, registry: testRegistry())
    let plans = try runner.plan()
    XCTAssertEqual(plans.count, 4)
    let budget = 2 << 30
    for plan in plans {
      let r = plan.request
      XCTAssertGreaterThan(r.footprint(0..<plan.spec.blockCount), budget, "one model does not fit a device")
      XCTAssertGreaterThanOrEqual(plan.shards.count, 2)
      for s in plan.shards { XCTAssertLessThanOrEqual(r.footprint(s), budget / 2) }
      // The head's tied replica is a value and a gradient (no optimizer state).
      let head = r.blocks[plan.spec.blockCount - 1]
      XCTAssertEqual(head.stateBytes(stateCopies: 2), (2 * 768 * 4) * 4 + 50257 * 768 * 4 * 2)
    }
    let result = try runJob(
      job,
      overrides: [
        "job.output=\"\(dir)/run\"", "train.steps=1", "sweep.train.lr=[3e-4]", "train.eval_batches=1",
        "cluster.host_memory=\"1GiB\"",
      ])
    XCTAssertEqual(result.runs.map(\.status), [.done])
    XCTAssertGreaterThan(result.store.bytesWritten, 0, "1 GiB of host RAM: state spilled to disk")
  }
}
