import Foundation
import HydraConfig
import HydraCore

/// Where `hydra-mpi plan` takes task times from.
public enum TaskTimes {
  /// Each shard's FLOPs at this rate per device (forward; a backward counts twice): only the ratios
  /// are meaningful.
  case flops(gflops: Double)
  /// A profile's per-block seconds; `file` names it in errors.
  case profile(ProfileFile, file: String)
}

extension JobRunner {
  /// The job's models as the simulator takes them: each member's steps, and per shard of its plan
  /// the seconds of its forward and backward task (the sum of its blocks'), and the bytes of its
  /// state (what a move of the shard carries); and the seconds of an evaluation, when it is due.
  public func simulatedModels(_ plans: [Plan], times: TaskTimes) throws -> [SimulatedModel] {
    try zip(plans, config.members).map { plan, member in
      let batch = member.train.batchSize
      let forward: [Double], backward: [Double]
      var firstForward: [Double] = [], firstBackward: [Double] = []
      var checkpointSeconds = 0.0
      switch times {
      case .flops(let gflops):
        forward = plan.shards.map { range in
          TaskCost.forwardSeconds(range.map { plan.request.blocks[$0] }, batchSize: batch, flopsPerSecond: gflops * 1e9)
        }
        backward = forward.map { TaskCost.backwardPerForward * $0 }
      case .profile(let profile, let file):
        let shape = try profile.shape(ProfileFile.key(plan.spec, batch: batch), file: file)
        let blocks = try shape.blockSeconds(plan.spec.blockCount, file: file)
        // A shard's task takes its blocks' times added up.
        func perShard(_ seconds: [Double]) -> [Double] {
          plan.shards.map { range in range.reduce(0) { $0 + seconds[$1] } }
        }
        forward = perShard(blocks.forward)
        backward = perShard(blocks.backward)
        if blocks.firstForward != blocks.forward || blocks.firstBackward != blocks.backward {
          firstForward = perShard(blocks.firstForward)
          firstBackward = perShard(blocks.firstBackward)
        }
        checkpointSeconds = shape.checkpointSeconds ?? 0
      }
      var model = SimulatedModel(steps: member.train.steps, forwardSeconds: forward, backwardSeconds: backward)
      model.firstForwardSeconds = firstForward
      model.firstBackwardSeconds = firstBackward
      // An evaluation is a forward of every shard over the validation rows it reads (at most
      // eval_batches batches), on the device that ended the step; its time scales with the rows.
      let rows = min(
        plan.data.validationCount, member.train.evalBatches.multipliedReportingOverflow(by: batch).partialValue)
      model.evaluationSeconds = Double(max(rows, 0)) / Double(batch) * forward.reduce(0, +)
      model.evalEvery = member.train.evalEvery
      model.checkpointSeconds = checkpointSeconds
      model.checkpointEvery = member.train.checkpointEvery
      model.stateBytes = plan.shards.map { range in
        range.reduce(0) { saturatingSum($0, plan.request.blocks[$1].stateBytes(stateCopies: plan.request.stateCopies)) }
      }
      return model
    }
  }

  /// The measured profile of every distinct model shape of the job (forward and backward seconds
  /// per block, the backward with the optimizer's update of the block's parameters, `repetitions`
  /// timed runs after a warm-up, their mean kept) on the job's kernels and
  /// threads per device, cached in the output folder as `profile.json`: shapes already there,
  /// measured with the same kernels and threads, are reused; the others are measured and added.
  /// Under `shm` the devices share this machine's cores, caches and memory bandwidth, so each
  /// shape is measured on as many threads at once as the job has devices (at most the cores), and
  /// their times averaged: a block timed alone runs faster than it does in the job.
  /// Returns the profile and its path.
  public func measuredProfile(_ plans: [Plan], repetitions: Int, log: (String) -> Void) throws -> (
    ProfileFile, String
  ) {
    let cluster = config.cluster
    let path = config.job.output + "/profile.json"
    var cached: ProfileFile?
    if FileManager.default.fileExists(atPath: path) {
      do {
        let p = try ProfileFile.read(path)
        if p.kernels == cluster.kernels && p.threadsPerDevice == cluster.threadsPerDevice {
          cached = p
        } else {
          log("\(path): measured on other kernels or threads; measuring again")
        }
      } catch {
        log("\(error); measuring again")
      }
    }
    var profile =
      cached
      ?? ProfileFile(
        shapes: [], kernels: cluster.kernels, threadsPerDevice: cluster.threadsPerDevice,
        note: "measured by hydra-mpi plan --measure")
    var added = 0
    var kernels: [Kernels] = []
    let together =
      cluster.backend == "shm"
      ? max(1, min(cluster.devices, ProcessInfo.processInfo.activeProcessorCount / max(cluster.threadsPerDevice, 1)))
      : 1
    for (plan, member) in zip(plans, config.members) {
      let key = ProfileFile.key(plan.spec, batch: member.train.batchSize)
      if profile.shapes.contains(where: { $0.shape == key }) { continue }
      while kernels.count < together {
        kernels.append(
          try registry.makeKernels(
            cluster.kernels, threads: cluster.threadsPerDevice, memory: DeviceMemory(label: "profile \(kernels.count)"))
        )
      }
      log(
        "measuring \(key) (\(plan.spec.blockCount) blocks, \(repetitions) repetition(s) each, on \(together) thread(s) at once)"
      )
      // On every thread at once: first the first step's runs (on fresh memory), then, apart, the
      // steady ones (a first run's letting go of kept buffers would make them fresh too).
      func onEveryThread(
        _ measure: @escaping @Sendable (Kernels) throws -> (forward: [Double], backward: [Double])
      ) throws -> (forward: [Double], backward: [Double]) {
        let results = Locked(
          [Swift.Result<(forward: [Double], backward: [Double]), Error>?](repeating: nil, count: kernels.count))
        DispatchQueue.concurrentPerform(iterations: kernels.count) { [kernels] i in
          let r = Swift.Result { try measure(kernels[i]) }
          results.withLock { $0[i] = r }
        }
        let times = try results.withLock { $0 }.map { try $0!.get() }
        func mean(_ pick: ((forward: [Double], backward: [Double])) -> [Double]) -> [Double] {
          (0..<plan.spec.blockCount).map { b in times.reduce(0) { $0 + pick($1)[b] } / Double(times.count) }
        }
        return (mean { $0.forward }, mean { $0.backward })
      }
      let (spec, batch, optimizer) = (plan.spec, member.train.batchSize, JobRunner.optimizer(member.train))
      let first = try onEveryThread { k in
        try BlockProfile.measureFirstRuns(
          spec, batch: batch, repetitions: repetitions, kernels: k, optimizer: optimizer)
      }
      let steady = try onEveryThread { k in
        try BlockProfile.measureDirections(
          spec, batch: batch, repetitions: repetitions, kernels: k, optimizer: optimizer)
      }
      let checkpoint = try checkpointSeconds(plan, member: member, repetitions: repetitions)
      profile.shapes.append(
        .init(
          shape: key, forwardSeconds: .each(steady.forward), backwardSeconds: .each(steady.backward),
          firstForwardSeconds: .each(first.forward), firstBackwardSeconds: .each(first.backward),
          checkpointSeconds: checkpoint))
      added += 1
    }
    if added > 0 {
      do {
        try FileManager.default.createDirectory(atPath: config.job.output, withIntermediateDirectories: true)
        try writeAtomically(profile.json(), to: path)
      } catch {
        throw WriteError(file: path, "cannot write the measured profile: \(error)")
      }
    } else {
      log("profile: every shape from \(path)")
    }
    return (profile, path)
  }
}

extension JobRunner {
  /// Seconds of one checkpoint write of `plan`'s model, as the runtime writes it (`Checkpoint.write`:
  /// weights and optimizer state, hashed and flushed, into the output folder's file system): the
  /// mean of `repetitions` (1 to 3) writes of a model built like the member, its state touched,
  /// each into a scratch folder of the output folder, removed after. Not counted: bringing a
  /// shard's state back from the host store or its spill file first, which a job whose state
  /// spills also does.
  func checkpointSeconds(_ plan: Plan, member: ModelMember, repetitions: Int) throws -> Double {
    let t = member.train
    let settings = TrainSettings(steps: t.steps, batchSize: t.batchSize, optimizer: Self.optimizer(t))
    let run = try ModelRun(
      index: 0, id: member.id, spec: plan.spec, seed: member.seed, settings: settings, data: plan.data,
      shards: plan.shards, backend: try registry.makeBackend("shm", devices: 1))
    // A job's optimizer state holds values by its first checkpoint; fresh zero pages read faster.
    for p in run.ownedParameters { for s in p.state { s.data.update(repeating: 1e-3, count: s.count) } }
    let scratch = config.job.output + "/.profile-checkpoint-\(getpid())"
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    let n = max(1, min(repetitions, 3))
    var total = 0.0
    for r in 0..<n {
      let start = DispatchTime.now().uptimeNanoseconds
      do {
        try Checkpoint.write(run, to: scratch + "/\(r)", keep: 1)
      } catch {
        throw WriteError(file: scratch, "cannot time a checkpoint write for the profile: \(error)")
      }
      total += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }
    return total / Double(n)
  }
}

/// A value shared between threads behind a lock.
private final class Locked<Value>: @unchecked Sendable {
  private var value: Value
  private let lock = NSLock()
  init(_ value: Value) { self.value = value }
  func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
    lock.lock()
    defer { lock.unlock() }
    return try body(&value)
  }
}
