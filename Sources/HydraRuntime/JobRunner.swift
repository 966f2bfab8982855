import Foundation
import HydraConfig
import HydraCore

/// Runs a whole job: loads its data, builds every member, trains them on the job's devices and
/// writes the output folder. Everything that can be wrong with the input is checked before the
/// output folder is touched.
public final class JobRunner {
  public let config: JobConfig
  public let registry: PluginRegistry
  public var log: (String) -> Void = { print($0) }
  /// Redraw a live view in place (a terminal) instead of printing progress lines.
  public var live = false
  /// Continue every model that has a checkpoint in the output folder from that checkpoint.
  public var resume = false
  /// Stop every model at this step (with a checkpoint there), to be resumed later.
  public var pauseAt: Int?
  /// Print a progress line every this many steps of a model (evaluations always print).
  public var logEvery = 50
  /// The backend, when the caller made it already (`mpi`: MPI is started before the job is
  /// planned, so that a failure on any rank stops them all); else the registry makes it.
  public var backend: Backend?

  private let stopLock = NSLock()
  private var stopRequested = false
  private var activeCoordinator: Coordinator?

  /// Stops the run early (SIGTERM, SIGINT): no model starts another step, each ends its current
  /// one or drops it (see `Coordinator.requestStop`), every model that trained gets a checkpoint at
  /// the step it reached, and `run` returns with `stopped` set. Any thread, any time.
  public func requestStop() {
    stopLock.lock()
    stopRequested = true
    let coordinator = activeCoordinator
    stopLock.unlock()
    coordinator?.requestStop()
  }

  public init(config: JobConfig, registry: PluginRegistry) {
    self.config = config
    self.registry = registry
  }

  /// When this runner was made: the start of `summary.json`'s `phases` (start-up, training, end).
  private let created = DispatchTime.now()
  private func sinceCreated() -> Double { Double(DispatchTime.now().uptimeNanoseconds - created.uptimeNanoseconds) / 1e9 }

  /// The per-model results, in member order.
  public struct Result {
    public var makespan: Double
    public var runs: [ModelRun]
    public var output: String
    public var devices: [Device]
    public var store: HostStore
    public var backend: Backend
    /// False in the processes of a distributed backend that only ran tasks: they hold no results.
    public var coordinating = true
    /// The run was stopped early by `requestStop`.
    public var stopped = false
  }

  /// One member, planned: its architecture, data, shards and activation policy.
  public struct Plan {
    public var spec: ModelSpec
    public var data: Dataset
    public var request: PartitionRequest
    public var shards: [Range<Int>]
    public var policy: ActivationPolicy
    /// What the plan changed from the job file's settings, for the user (double buffering off).
    public var notes: [String] = []
  }

  /// The device budget: `[cluster] device_memory`, or a quarter of this machine's memory shared
  /// by the devices of this process (a device is never unlimited).
  public var deviceBudget: Int {
    config.cluster.deviceMemory ?? MachineMemory.share(fraction: 4, parts: devicesPerProcess)
  }

  /// The host store's RAM: `[cluster] host_memory`, or half of this machine's memory.
  public var hostBudget: Int {
    config.cluster.hostMemory ?? MachineMemory.share(fraction: 2, parts: 1)
  }

  /// Processes with a host store (and devices, maybe a disk) of their own: one under `shm`, every
  /// rank under a distributed backend.
  private var storeProcesses: Int {
    config.cluster.backend == "shm" ? 1 : max(config.cluster.devices, MachineMemory.localProcesses, 1)
  }

  /// Devices in one process: `devices` under `shm`, one per rank otherwise (and the ranks on one
  /// machine share it, when the launcher says how many there are).
  private var devicesPerProcess: Int {
    if config.cluster.backend == "shm" { return max(config.cluster.devices, 1) }
    return MachineMemory.localProcesses
  }

  public func run() throws -> Result {
    let cluster = config.cluster
    let backend = try self.backend ?? registry.makeBackend(cluster.backend, devices: cluster.devices)
    let distributed = backend as? DistributedBackend
    var plans: [Plan] = []
    var madeScheduler: Scheduler?
    var selection: SelectionDriver?
    var startError: Error?
    // Wall seconds since the runner was made: planning (the data read), building the models (their
    // weights drawn or read), the whole start-up, training (the coordinator's run, final
    // checkpoints included) and the end (the output folder's files), for summary.json.
    var phases: [String: Double] = [:]
    do {
      if distributed != nil && backend.deviceCount > 1,
        case .int(let n)? = config.partitioner.options["profile_steps"], n > 0
      {
        // Each process would time the blocks itself, and slightly different times cut models
        // into different shards.
        throw InputError(
          file: config.file, line: config.line(table: "partitioner", key: "profile_steps"),
          "partitioner.profile_steps cannot be used with backend \"\(backend.name)\" on several processes: each would measure its own times and cut the models differently; leave it out (FLOP counts are the same everywhere)"
        )
      }
      plans = try plan()
      phases["plan_seconds"] = sinceCreated()
      madeScheduler = try makeScheduler()
      selection = try makeSelection()
      if (distributed?.localDevice ?? 0) == 0 {
        try OutputLock.check(folder: config.job.output, config: config, resume: resume)
      }
      if distributed != nil && cluster.devicesGiven && cluster.devices != backend.deviceCount {
        throw InputError(
          file: config.file, line: config.line(table: "cluster", key: "devices"),
          "cluster.devices = \(cluster.devices), but backend \"\(backend.name)\" has one device per process and this job has \(backend.deviceCount) processes; leave devices out or make it \(backend.deviceCount)"
        )
      }
    } catch {
      startError = error
    }
    /// Under a distributed backend, a point every process passes together: if any failed before it,
    /// all stop, with the failing processes' messages.
    func together(_ error: Error?) throws {
      guard let distributed else { return }
      let failures = try distributed.failures(error.map { "\($0 is InputError ? 2 : 1) \($0)" })
      if !failures.isEmpty {
        throw JobStopped(
          failures: failures.map { ($0.device, String($0.message.dropFirst(2))) },
          exitCode: failures.allSatisfy { $0.message.hasPrefix("2 ") } ? 2 : 1)
      }
    }
    if let distributed {
      // Every process planned the job (a bad data file on one node fails there only), and they
      // all read the same one: only then is anything written.
      try together(startError)
      // The job as read and the shards it was cut into: every process must train the same.
      // The plugins loaded too: same paths (in the job file), same sizes and bytes (the libraries).
      let planned =
        config.resolvedTOML() + plans.map { "\($0.shards)" }.joined(separator: "\n") + registry.loadedFingerprint
      guard try distributed.agree(on: stableHash(planned)) else {
        throw InputError(
          file: config.file,
          "the processes of this job read or planned different jobs (job file, --set options or data path differ between ranks); every rank must run the same job"
        )
      }
    }
    if let startError { throw startError }
    let local = distributed?.localDevice ?? 0
    let budget = deviceBudget
    // A device's kernels charge its working set (one task's allocations); the device's own memory,
    // above it, holds shard states too.
    let devices = try (0..<backend.deviceCount).map { d in
      Device(
        index: d,
        kernels: try registry.makeKernels(
          cluster.kernels, threads: cluster.threadsPerDevice,
          memory: DeviceMemory(workingSetOf: DeviceMemory(budget: budget, label: "device \(d)"))))
    }
    // Each process spills into a folder of its own, removed at the end: `<output>/spill` (under mpi
    // `spill/rank-N`), or a new folder inside the job's `spill_folder` (never that folder itself).
    let spill =
      cluster.spillFolder.map { "\($0)/hydra-\(config.job.name)-rank\(local)-pid\(getpid())" }
      ?? config.job.output + (distributed == nil ? "/spill" : "/spill/rank-\(local)")
    let store = HostStore(budget: hostBudget, folder: spill)
    for d in devices { store.attach(device: d.index, memory: d.memory) }
    for plan in plans { for note in plan.notes { log(note) } }
    if distributed != nil && local != 0 { log = { _ in } }  // a process that only runs tasks: no log
    let outputLock = local == 0 ? try OutputLock(folder: config.job.output, config: config, log: log) : nil
    defer { outputLock?.release() }
    // Every process, from here to its end: a next run waits for all of them, not only for rank 0.
    let presence = try OutputLock.Presence(folder: config.job.output, config: config)
    defer { presence.release() }
    let folder =
      local == 0 ? try OutputFolder(path: config.job.output, resolvedJob: config.resolvedTOML(), append: resume) : nil
    // The folder is this job's now (locked): a failure that ends it is recorded there.
    if folder != nil { (backend as? DistributedRuntime)?.failureRecord = config.job.output + "/failure.txt" }
    // Under a distributed backend every process builds every model, places every shard the same way
    // (from the plans: estimated work over the whole job, bytes of state) and keeps only the state
    // of the shards homed on it, letting go of the others as soon as each model is built.
    let homes = distributed.map { _ in
      Placement.homes(
        // FLOPs, not a measured profile (`profile_steps`): every process must place alike.
        work: zip(plans, config.members).map { plan, member in
          plan.shards.map { shard in
            TaskCost.stepSeconds(shard.map { plan.request.blocks[$0] }, batchSize: member.train.batchSize)
              * Double(member.train.steps)
          }
        },
        bytes: plans.map { plan in
          plan.shards.map { shard in
            shard.reduce(0) { $0 + plan.request.blocks[$1].stateBytes(stateCopies: plan.request.stateCopies) }
          }
        }, devices: devices.count, byShard: cluster.placement == .byShard)
    }
    var runs: [ModelRun] = []
    let buildStart = sinceCreated()
    do {
      runs = try buildRuns(plans, store: store, backend: backend, tidy: folder != nil) { m, s in
        homes == nil || homes![m][s] == local
      }
      phases["build_seconds"] = sinceCreated() - buildStart
    } catch {
      // The others must not wait for this process at the next point they pass together.
      try together(error)
      throw error
    }
    if let distributed {
      // Every process has read the checkpoints before any trains: rank 0 writes new ones (and
      // lets old ones go) from its first step on. And every process resumed each model at the
      // same step: a node that sees another output folder (not shared) would train from elsewhere.
      try together(nil)
      guard try distributed.agree(on: stableHash(runs.map { "\($0.id) \($0.step)" }.joined(separator: "\n"))) else {
        throw RuntimeError(
          "the processes of this job resumed their models at different steps: every rank must see the same output folder \(config.job.output) (a file system shared by the nodes)"
        )
      }
    }
    if resume, let folder {
      try folder.keepMetrics(upTo: Dictionary(uniqueKeysWithValues: runs.map { ($0.id, $0.step) }))
    }
    if let distributed {
      let checkpoints = config.job.output + "/checkpoints/"
      distributed.stepWork = { run, evaluate, checkpoint, device in
        let e = evaluate ? try run.evaluate(kernels: device.kernels, device: device.index) : nil
        if checkpoint {
          try Checkpoint.write(
            run, to: checkpoints + run.id, device: device.index,
            keep: self.config.members[run.index].train.keepCheckpoints)
        }
        return e
      }
      try distributed.attach(runs: runs, device: devices[local], store: store, homes: homes!)
      if local != 0 {
        try distributed.serve()
        return Result(
          makespan: 0, runs: runs, output: config.job.output, devices: devices, store: store, backend: backend,
          coordinating: false)
      }
    }
    let output = folder!
    let lock = NSLock()
    let scheduler = madeScheduler!
    let coordinator = Coordinator(runs: runs, devices: devices, scheduler: scheduler, backend: backend)
    if let selection { try startSelection(selection, runs: runs, output: output, coordinator: coordinator) }
    // A model's shards homed in other processes (a distributed backend), gathered into this
    // process's copy for `body` (an evaluation, a checkpoint) when `gather`, and let go after.
    func gathered(_ run: ModelRun, optimizerState: Bool, gather: Bool = true, _ body: () throws -> Void) throws {
      guard let distributed else { return try body() }
      if gather { try distributed.gather(run, optimizerState: optimizerState) }
      try body()
      let homes = distributed.homes(of: run.index)
      for s in homes.indices where homes[s] != local { run.releaseState(of: s) }
    }
    func writeCheckpoint(_ run: ModelRun, device: Int, inPlace: Bool = false) throws {
      try Checkpoint.write(
        run, to: output.checkpointFolder(run.id), device: device, keep: config.members[run.index].train.keepCheckpoints,
        inPlace: inPlace)
    }
    /// The step just ended at a rung, or the model ended: the selection policy hears of it and its
    /// decisions are carried out.
    func select(_ run: ModelRun, _ evaluation: Evaluation?) throws {
      guard let selection else { return }
      let decisions: [Int: SelectionDecision]
      if let evaluation, run.atRung, !run.status.isFinished, !selection.knows(model: run.index, step: run.step) {
        decisions = try selection.reached(model: run.index, step: run.step, evaluation: evaluation)
      } else if run.status.isFinished {
        decisions = try selection.ended(model: run.index)
      } else {
        return
      }
      let lines = describe(decisions, reporter: run.index, runs: runs, selection: selection)
      try coordinator.settle(decisions, reporter: run.index, policy: selection.policy.name)
      lines.forEach(log)
    }
    coordinator.afterStep = { [self] run, device in
      let diverged = run.status.isDiverged
      let evaluate = run.evaluationDue && !diverged
      let checkpoint = run.checkpointDue && !diverged
      let rate = run.settings.optimizer.learningRate(step: max(run.step - 1, 0))
      let now = coordinator.elapsed()
      var e: Evaluation?
      // The step's rows of metrics.csv (and the event files) and its progress line.
      func recordRows() throws {
        lock.lock()
        defer { lock.unlock() }
        if let loss = run.trainLosses.last {
          try output.record(
            model: run.id, step: run.step, split: "train", loss: loss, accuracy: nil, lr: rate, seconds: now)
        }
        if let e {
          try output.record(
            model: run.id, step: e.step, split: "val", loss: e.loss, accuracy: e.accuracy, lr: rate, seconds: now)
        }
        if case .diverged(let step) = run.status {
          log("\(run.id) diverged at step \(step): loss \(run.trainLosses.last ?? .nan)")
        } else if !live && (e != nil || run.step % logEvery == 0) {
          var line =
            "\(run.id) step \(run.step)/\(run.settings.steps) loss \(String(format: "%.4f", run.trainLosses.last ?? .nan))"
          if let e { line += String(format: " val %.4f acc %.4f", e.loss, e.accuracy) }
          line += String(format: " (%.1f s)", now)
          log(line)
        }
      }
      if let distributed, device.index != local, evaluate || checkpoint {
        // The step ran in another process: that device evaluates and writes the checkpoint.
        let done = try distributed.runStepWork(
          run, on: device.index, evaluate: evaluate, checkpoint: checkpoint)
        if let ev = done.evaluation {
          run.record(ev)
          e = ev
          let end = coordinator.elapsed()
          coordinator.recordEvaluation(of: run, on: device, start: end - done.seconds, end: end)
        }
        try recordRows()
        try select(run, e)
      } else if distributed == nil && checkpoint {
        // The checkpoint is file I/O: written off the device, on its writer thread, while the
        // device goes on with other models' tasks. The model's state leaves the device first
        // (for `cpu` an accounting move), so that the writer reads it where the host store
        // keeps it and no device's memory is held for it; the model runs no task until then.
        if evaluate {
          e = try run.evaluate(kernels: device.kernels, device: device.index)
          coordinator.recordEvaluation(of: run, on: device, start: now)
        }
        try recordRows()
        try run.demoteState()
        return { [e] in
          let start = coordinator.elapsed()
          try writeCheckpoint(run, device: device.index, inPlace: true)
          coordinator.recordOffDeviceWork("checkpoint", of: run, on: device, start: start)
          try select(run, e)
        }
      } else {
        try gathered(run, optimizerState: checkpoint, gather: evaluate || checkpoint) {
          if evaluate {
            e = try run.evaluate(kernels: device.kernels, device: device.index)
            coordinator.recordEvaluation(of: run, on: device, start: now)
          }
          // Rows before the checkpoint: a run killed between the two resumes before this step and
          // records it again (a resume drops rows past its checkpoint), never past it without them.
          try recordRows()
          if checkpoint {
            let start = coordinator.elapsed()
            try writeCheckpoint(run, device: device.index)
            coordinator.recordStepWork("checkpoint", of: run, on: device, start: start)
          }
        }
        try select(run, e)
      }
      return nil
    }
    let view = live ? LiveView(coordinator: coordinator) : nil
    view?.start()
    stopLock.lock()
    activeCoordinator = coordinator
    let stopNow = stopRequested
    stopLock.unlock()
    if stopNow { coordinator.requestStop() }
    let makespan: Double
    let trainStart = sinceCreated()
    do {
      makespan = try coordinator.run()
      view?.stop()
    } catch {
      view?.stop()
      throw error
    }
    let trainEnd = sinceCreated()
    stopLock.lock()
    activeCoordinator = nil
    stopLock.unlock()
    if coordinator.stopping {
      // Every model that trained and has no checkpoint of the step it reached gets one (those that
      // finished their step wrote theirs as at a pause), here, its shards gathered from their homes
      // under a distributed backend.
      for run in runs where run.step > 0 {
        guard Checkpoint.units(in: output.checkpointFolder(run.id)).first != Checkpoint.unitName(run.step) else {
          continue
        }
        try gathered(run, optimizerState: true) { try writeCheckpoint(run, device: devices[local].index) }
      }
      log("stopped: every model checkpointed at the step it reached; continue with --resume")
    }
    let reports = try distributed?.finish() ?? []
    let trace = coordinator.trace
    try output.writeTrace(trace, devices: devices.count)
    try output.writePicture(
      "schedule.svg",
      Charts.schedule(
        trace, devices: devices.count, title: "\(config.job.name): \(scheduler.name) on \(devices.count) device(s)"))
    try output.writePicture(
      "loss.svg",
      Charts.loss(
        runs.map { run in (model: run.id, points: run.evaluations.map { (step: $0.step, loss: $0.loss) }) },
        // trainLosses[i] is the loss of step i + 1, kept across a resume by the checkpoints.
        training: runs.map { run in
          (model: run.id, points: run.trainLosses.enumerated().map { (step: $0 + 1, loss: $1) })
        }, title: "\(config.job.name): loss", yLabel: "loss"))
    try output.finishEventFiles()
    var memory: [String: Any] = [
      "devices": devices.map { d -> [String: Any] in
        var m: [String: Any] = ["index": d.index, "peak_bytes": d.memory.peak]
        // Copies between the device's own memory and the host (0 where the kernels compute on
        // host memory: `cpu`, `reference`).
        var traffic = d.kernels.memory.buffers?.traffic ?? DeviceTraffic()
        if let r = reports.first(where: { $0.device == d.index }) {
          traffic = r.traffic
          m["peak_bytes"] = r.peakBytes
          m["host"] = r.host
          m["host_store_peak_bytes"] = r.storePeakBytes
          m["bytes_written_to_disk"] = r.bytesWrittenToDisk
          m["bytes_read_from_disk"] = r.bytesReadFromDisk
          m["tensors_sent"] = r.tensorsSent
        }
        m["host_to_device_bytes"] = traffic.hostToDeviceBytes
        m["device_to_host_bytes"] = traffic.deviceToHostBytes
        m["host_to_device_copies"] = traffic.hostToDeviceCopies
        m["device_to_host_copies"] = traffic.deviceToHostCopies
        if budget != .max { m["budget_bytes"] = budget }
        return m
      },
      "host_store": [
        "peak_bytes": store.peakBytes, "budget_bytes": hostBudget,
        "bytes_written_to_disk": store.bytesWritten, "bytes_read_from_disk": store.bytesRead,
        "in_transit_bytes_written_to_disk": store.transitBytesWritten,
      ],
    ]
    // This process (the coordinator's, under mpi) at its most, the final checkpoints included.
    if let rss = MachineMemory.processPeakResidentBytes { memory["process_peak_resident_bytes"] = rss }
    // Tensor buffers of 256 KiB and more: how many reused kept pages, how many were mapped afresh.
    let pages = MappedBuffers.shared.statistics
    memory["host_buffers"] = [
      "reused": pages.reused, "mapped": pages.mapped, "mapped_bytes": pages.mappedBytes,
      "peak_live_bytes": pages.peakLiveBytes,
    ]
    var decisions: [String: Any] = [
      "scheduler": scheduler.name, "decisions": coordinator.decisions,
      "seconds_per_decision": coordinator.decisionSeconds / Double(max(coordinator.decisions, 1)),
      "cpu_seconds_per_decision": coordinator.decisionCPUSeconds / Double(max(coordinator.decisions, 1)),
      "assignments": coordinator.assignments,
      "device_busy_fraction": coordinator.deviceSnapshot().map(\.busyFraction),
    ]
    let report = scheduler.report
    if !report.isEmpty { decisions["scheduler_report"] = report }
    if let distributed {
      decisions["backend"] = backend.name
      decisions["shard_moves"] = coordinator.moves
      decisions["moved_bytes"] = coordinator.movedBytes
      if distributed.bandwidth.isFinite { decisions["measured_bandwidth_bytes_per_second"] = distributed.bandwidth }
      // Tensors that went from one process to another (activations, gradients, tied weights,
      // shard states), all devices together.
      decisions["tensors_sent"] = distributed.tensorsSent + reports.reduce(0) { $0 + $1.tensorsSent }
      decisions["bytes_sent"] = distributed.bytesSent + reports.reduce(0) { $0 + $1.bytesSent }
      decisions["tensors_left_over"] = distributed.leftOver + reports.reduce(0) { $0 + $1.leftOver }
    }
    phases["start_seconds"] = trainStart
    phases["train_seconds"] = trainEnd - trainStart
    phases["end_seconds"] = sinceCreated() - trainEnd
    try output.writeSummary(
      job: config.job.name, makespan: makespan, phases: phases,
      models: runs.map { summary($0, selection: selection) }, memory: memory, coordinator: decisions, selection: selection.map { selectionSummary($0, runs: runs) })
    var result = Result(
      makespan: makespan, runs: runs, output: output.path, devices: devices, store: store, backend: backend)
    result.stopped = coordinator.stopping
    return result
  }

  /// `summary.json`'s `selection`: the policy and its settings, whether its decisions depend on
  /// timing, and the steps trained against the steps the job would have trained without it.
  private func selectionSummary(_ selection: SelectionDriver, runs: [ModelRun]) -> [String: Any] {
    [
      "name": selection.policy.name, "metric": selection.section.metric.rawValue,
      "min_steps": selection.section.minSteps, "reduction_factor": selection.section.reductionFactor,
      "depends_on_timing": selection.policy.dependsOnTiming,
      "steps_trained": runs.reduce(0) { $0 + $1.step },
      "steps_without_selection": runs.reduce(0) { $0 + $1.settings.steps },
      "stopped": runs.filter { $0.status.isStopped }.map(\.id),
    ]
  }

  private func summary(_ run: ModelRun, selection: SelectionDriver?) -> [String: Any] {
    let member = config.members[run.index]
    var overrides: [String: Any] = [:]
    for o in member.overrides { overrides[o.key] = jsonValue(o.value) }
    var s: [String: Any] = [
      "id": run.id, "overrides": overrides,
      "status": run.status.isFinished || run.step == 0 ? run.status.name : "paused", "steps": run.step,
      "seconds": run.seconds, "shards": run.shards.map { [$0.lowerBound, $0.upperBound] },
      // Per shard: the working set planned, and the most a task of it allocated in this process.
      "working_set_bytes": run.workingSets, "measured_working_set_bytes": run.measuredWorkingSets,
      // Written in this process (under mpi, those of steps that ran on rank 0).
      "checkpoints_written": run.checkpointsWritten, "checkpoint_seconds": run.checkpointSeconds,
      "footprint_bytes": run.footprints,
      "seed": run.seed,
    ]
    if case .diverged(let step) = run.status { s["diverged_at_step"] = step }
    if case .stopped(let step) = run.status { s["stopped_at_step"] = step }
    if run.waiting { s["status"] = "waiting" }
    if let selection {
      // The model's rung history: its result at each rung it reached, and what became of it there.
      s["rungs"] = selection.events.compactMap { e -> [String: Any]? in
        guard let r = e.result, r.model == run.index else { return nil }
        var h: [String: Any] = ["rung": r.rung, "step": r.step]
        if r.score.isFinite {
          h[selection.section.metric.rawValue] = selection.section.metric == .valLoss ? r.score : -r.score
        }
        let later = selection.events.drop { $0 != e }.first {
          $0.decisions[run.index] != nil && $0 != e && $0.decisions[run.index] != .pause
        }
        h["decision"] = (later?.decisions[run.index] ?? e.decisions[run.index])?.rawValue ?? "proceed"
        if e.decisions[run.index] == .pause { h["waited"] = true }
        return h
      }
    }
    // JSON has no NaN or infinity: a value that is not finite is left out.
    func finite(_ x: Double?) -> Double? { x.flatMap { $0.isFinite ? $0 : nil } }
    s["train_loss"] = finite(run.trainLosses.last)
    if let e = run.evaluations.last {
      s["val_loss"] = finite(e.loss)
      s[run.spec.isClassifier ? "val_accuracy" : "val_token_accuracy"] = finite(e.accuracy)
    }
    return s
  }
  private func jsonValue(_ v: ConfigValue) -> Any {
    switch v {
    case .int(let i): return i
    case .double(let d): return d
    case .string(let s): return s
    case .bool(let b): return b
    case .array(let a): return a.map(jsonValue)
    }
  }

  /// Each member's architecture and data set, the data loaded once per distinct window length.
  /// Checks that model and data fit together.
  public func modelSpecs() throws -> [(spec: ModelSpec, data: Dataset)] {
    var datasets: [[Int]: Dataset] = [:]
    return try config.members.map { member in
      let data = try dataset(&datasets, member)
      let spec = try modelSpec(member.model, dataFeatures: data.featureCount)
      try check(spec, against: data, member: member)
      return (spec, data)
    }
  }

  /// Bytes of a member's state: weights, gradients and optimizer moments; without `gradients`,
  /// what the host store holds of it (a replica's gradient and its own moments are not kept).
  /// Saturating.
  private static func stateBytes(_ spec: ModelSpec, _ member: ModelMember, gradients: Bool = true) -> Int {
    let copies = member.train.optimizer == .sgd ? 1 : 2
    return (0..<spec.blockCount).reduce(0) {
      let costs = spec.blockCosts($1)
      let all = costs.stateBytes(stateCopies: copies)
      return saturatingSum($0, gradients ? all : all - costs.parameterBytes - costs.replicaBytes)
    }
  }

  /// Every member's state (weights, gradients' optimizer moments) exists from the start, in the
  /// host store's RAM and past it on disk: a job whose states cannot fit both together is refused
  /// before anything is allocated, naming the sizes (sums saturate: a sweep may be astronomical).
  private func checkStateFits(_ specs: [ModelSpec]) throws {
    let total = zip(specs, config.members).map { Self.stateBytes($0, $1) }.reduce(0, saturatingSum)
    var probe = config.cluster.spillFolder ?? config.job.output
    while !FileManager.default.fileExists(atPath: probe), probe != "/", !probe.isEmpty {
      probe = (probe as NSString).deletingLastPathComponent
    }
    var fs = statvfs()
    let disk = statvfs(probe, &fs) == 0 ? Int(clamping: UInt64(fs.f_bavail).multipliedReportingOverflow(by: UInt64(fs.f_frsize)).partialValue) : Int.max
    let processes = storeProcesses
    let room = saturatingSum(hostBudget, disk).multipliedReportingOverflow(by: processes)
    let capacity = room.overflow ? Int.max : room.partialValue
    guard total <= capacity else {
      throw InputError(
        file: config.file, line: nil,
        "the \(config.members.count) models' states need \(total == Int.max ? "more than \(Int.max) bytes" : formatBytes(total)), more than the host store and disk can hold together (\(formatBytes(capacity)): host_memory \(formatBytes(hostBudget)) plus \(formatBytes(disk)) free at \(probe)\(processes > 1 ? ", times \(processes) processes" : "")); train fewer or smaller models per job")
    }
  }

  /// Everything about every member that can be decided without allocating: architecture, data,
  /// shards, activation policy. Bad input of any kind is found here, before the output folder exists.
  public func plan() throws -> [Plan] {
    let cluster = config.cluster
    let budget = deviceBudget
    let partitioner = try registry.makePartitioner(config.partitioner.name)
    let specs = try modelSpecs()
    // `profile_steps` is the runtime's option, not the plugin's.
    var partitionerOptions = config.partitioner.options
    var profileSteps = 0
    if let v = partitionerOptions.removeValue(forKey: "profile_steps") {
      guard case .int(let n) = v, n >= 0, n <= 1000 else {
        throw InputError(
          file: config.file, line: config.line(table: "partitioner", key: "profile_steps"),
          "partitioner.profile_steps must be an integer in 0...1000 (timed repetitions per block; 0 = use FLOP counts)")
      }
      profileSteps = n
    }
    var profiles: [String: [Double]] = [:]
    let profileKernels =
      profileSteps > 0
      ? try registry.makeKernels(
        cluster.kernels, threads: cluster.threadsPerDevice, memory: DeviceMemory(label: "profile"))
      : nil
    try checkStateFits(specs.map(\.spec))
    func makePlan(_ i: Int, checkpointing: Bool) throws -> Plan {
      let (spec, data) = specs[i]
      let member = config.members[i]
      let batch = member.train.batchSize
      var request = spec.partitionRequest(
        batch: batch, stateCopies: member.train.optimizer == .sgd ? 1 : 2, budget: budget,
        doubleBuffering: cluster.doubleBuffering, activationCheckpointing: checkpointing,
        blockSeconds: try profileKernels.map { kernels in
          let key = "\(spec) \(batch)"
          if let p = profiles[key] { return p }
          let p = try BlockProfile.measure(spec, batch: batch, repetitions: profileSteps, kernels: kernels)
          profiles[key] = p
          return p
        },
        options: partitionerOptions)
      var notes: [String] = []
      let shards: [Range<Int>]
      do {
        do {
          shards = try partitioner.partition(request)
        } catch let e as PartitionError where request.doubleBuffering && e.key == "cluster.device_memory" {
          // A block too big for half the device: this model runs single-buffered (its next shard is
          // promoted when its task starts, not while the previous one computes).
          var single = request
          single.doubleBuffering = false
          shards = try partitioner.partition(single)
          request = single
          notes.append(
            "\(member.id): a shard does not fit half of the device budget (\(formatBytes(budget))), so double buffering is off for this model"
          )
        }
      } catch let e as PartitionError {
        let parts = e.key.split(separator: ".", maxSplits: 1).map(String.init)
        let line =
          parts.count == 2 ? config.line(table: parts[0], key: parts[1]) : config.line(table: e.key, key: "name")
        let given =
          cluster.deviceMemory == nil
          ? " (cluster.device_memory is not set: a quarter of this machine's memory, shared by its devices)" : ""
        throw InputError(file: config.file, line: line, "\(member.id): \(e.message)\(given)")
      }
      precondition(
        validatePartition(shards, blockCount: spec.blockCount), "partitioner \(partitioner.name) returned \(shards)")
      if let initPath = member.model.initPath { try Checkpoint.check(spec, against: initPath) }
      return Plan(
        spec: spec, data: data, request: request, shards: shards,
        policy: ActivationPolicy(checkpointing: checkpointing, releaseBuffers: true, prefetch: request.doubleBuffering),
        notes: notes)
    }
    switch cluster.activationCheckpointing {
    case .on: return try specs.indices.map { try makePlan($0, checkpointing: true) }
    case .off: return try specs.indices.map { try makePlan($0, checkpointing: false) }
    case .auto: return try autoCheckpointing(specs.map(\.spec), makePlan)
    }
  }

  /// `activation_checkpointing = "auto"`, model by model. Between its tasks a model keeps its
  /// boundary tensors, tied weights in transit and (unless recomputed) every block's activations
  /// in the host store, beside its shards' parameters and optimizer state (gradients live on the
  /// devices only). Where all of that, for every model at once, fits the store's RAM, every model
  /// keeps its activations. Otherwise the models, in job order, keep theirs while what must be
  /// held still fits the store's RAM plus what the devices can hold of it (each device's budget
  /// less the largest shard footprint, and with double buffering the next shard's working set);
  /// the rest recompute. Kept activations past that would go
  /// to disk and back every step, which on the machines measured costs more than computing them
  /// again (the GPT-2-small sweep of Examples/gpt2-sweep at 6 steps, makespans: 104 s with every
  /// model recomputing, 104.8 s with none, 101.6 s with two keeping and 2.5 GB more to disk, 93.4 s
  /// with one keeping, which this rule picks). Recomputing changes no value: the bytes are the
  /// same either way.
  private func autoCheckpointing(_ specs: [ModelSpec], _ makePlan: (Int, Bool) throws -> Plan) throws -> [Plan] {
    let members = config.members
    var kept: [Int] = [], held = 0
    for (spec, member) in zip(specs, members) {
      let between = spec.bytesHeldBetweenTasks(batch: member.train.batchSize)
      kept.append(between.kept)
      held = [held, between.boundaries, Self.stateBytes(spec, member, gradients: false)].reduce(0, saturatingSum)
    }
    if kept.reduce(held, saturatingSum) <= hostBudget {
      return try members.indices.map { try makePlan($0, false) }
    }
    var plans = try members.indices.map { try makePlan($0, true) }
    let processes = storeProcesses
    // A device holds the running shard (its state and working set), with double buffering room
    // for the next one's footprint (its state, prefetched, is among what must be held; its
    // working set is not), and in what is left more states resting between their tasks, each
    // with its gradients beside it: of those bytes, (1 + c) / (2 + c) are what must be held.
    let copies = members.map { $0.train.optimizer == .sgd ? 1 : 2 }.max() ?? 2
    let doubled = plans.contains { $0.request.doubleBuffering }
    func room(largest: Int, state: Int) -> Int {
      let busy = doubled ? saturatingSum(largest, largest - state) : largest
      let resting = saturatingProduct(max(0, deviceBudget - busy), devicesPerProcess) / (2 + copies) * (1 + copies)
      return saturatingProduct(saturatingSum(hostBudget, resting), processes)
    }
    func largestFootprint(_ plan: Plan) -> (footprint: Int, state: Int) {
      plan.shards.map { (plan.request.footprint($0), plan.request.stateBytes($0)) }.max { $0.0 < $1.0 } ?? (0, 0)
    }
    var largest = plans.map(largestFootprint).max { $0.footprint < $1.footprint } ?? (0, 0)
    for i in members.indices {
      let need = saturatingSum(held, kept[i])
      guard need <= room(largest: largest.footprint, state: largest.state) else { continue }
      // A block too big for the device without recomputing: this model recomputes.
      guard let keeping = try? makePlan(i, false) else { continue }
      let own = largestFootprint(keeping)
      let wider = own.footprint > largest.footprint ? own : largest
      guard need <= room(largest: wider.footprint, state: wider.state) else { continue }
      held = need
      largest = wider
      plans[i] = keeping
    }
    return plans
  }

  /// The `[scheduler]` plugin; bad options are the user's input (exit 2, with the line).
  /// The `[selection]` policy, started with every member's rungs; nil for "none" (every model
  /// trains to the end, nothing extra is evaluated).
  public func makeSelection() throws -> SelectionDriver? {
    let section = config.selection
    guard section.name != "none" else { return nil }
    do {
      return try SelectionDriver(
        policy: try registry.makeSelection(section.name), section: section, ids: config.members.map(\.id),
        rungSteps: rungSteps)
    } catch let e as SelectionError {
      throw InputError(file: config.file, line: config.line(table: "selection", key: e.key), e.description)
    }
  }

  /// Each member's rung steps (none without a selection policy).
  public var rungSteps: [[Int]] {
    config.members.map { config.selection.name == "none" ? [] : config.selection.rungs.steps(below: $0.train.steps) }
  }

  /// Before training: the record of an earlier run's selection (a resumed run) told to the fresh
  /// policy, and what it decided carried out; then any model that reached a rung in that run
  /// (its checkpoint is there) without the policy hearing of it is reported now.
  func startSelection(_ selection: SelectionDriver, runs: [ModelRun], output: OutputFolder, coordinator: Coordinator)
    throws
  {
    let path = output.path + "/selection.json"
    if resume {
      try selection.replay(from: path)
      for (m, decision) in selection.latest.sorted(by: { $0.key < $1.key }) where decision != .proceed {
        let run = runs[m]
        // A model resumes from its newest checkpoint: at the rung where it stopped or waits.
        guard run.atRung, !run.status.isFinished else { continue }
        try coordinator.settle([m: decision], reporter: m, policy: selection.policy.name)
      }
    } else {
      try? FileManager.default.removeItem(atPath: path)
    }
    selection.path = path
    for run in runs where run.atRung && !run.status.isFinished && !run.waiting {
      guard let e = run.evaluations.last, e.step == run.step, !selection.knows(model: run.index, step: run.step) else {
        continue
      }
      let decisions = try selection.reached(model: run.index, step: run.step, evaluation: e)
      let lines = describe(decisions, reporter: run.index, runs: runs, selection: selection)
      try coordinator.settle(decisions, reporter: run.index, policy: selection.policy.name)
      lines.forEach(log)
    }
  }

  /// One line per model that stops, waits, or goes on after waiting (not `reporter` going on),
  /// made before the decisions are carried out (a model that goes on is soon at another step).
  func describe(
    _ decisions: [Int: SelectionDecision], reporter: Int, runs: [ModelRun], selection: SelectionDriver
  ) -> [String] {
    decisions.sorted(by: { $0.key < $1.key }).compactMap { m, decision in
      let run = runs[m]
      let at = "step \(run.step)" + (run.rungSteps.firstIndex(of: run.step).map { " (rung \($0))" } ?? "")
      switch decision {
      case .stop: return "\(run.id) stopped by \(selection.policy.name) at \(at)"
      case .pause: return "\(run.id) waits at \(at) for the other models"
      case .proceed: return m != reporter ? "\(run.id) goes on from \(at)" : nil
      }
    }
  }

  public func makeScheduler() throws -> Scheduler {
    do {
      return try registry.makeScheduler(config.scheduler.name, options: config.scheduler.options, seed: config.job.seed)
    } catch let e as SchedulerError {
      throw InputError(file: config.file, line: config.line(table: "scheduler", key: "name"), e.description)
    }
  }

  /// The optimizer a member's `[train]` table asks for.
  static func optimizer(_ t: TrainSection) -> Optimizer {
    Optimizer(
      kind: t.optimizer == .sgd ? .sgd : .adamw, lr: Float(t.lr), weightDecay: Float(t.weightDecay),
      momentum: Float(t.momentum), beta1: Float(t.betas[0]), beta2: Float(t.betas[1]), eps: Float(t.eps),
      schedule: t.schedule == .constant ? .constant : .cosine, warmupSteps: t.warmupSteps, totalSteps: t.steps)
  }

  /// Builds and initialises every member. The state of shards for which `keep(model, shard)` is
  /// false is let go as soon as it is built (another process holds it), and no checkpoint is
  /// loaded into it. Only the process that owns the output folder (`tidy`) mends the checkpoint
  /// folders (what an interrupted write left, the files at the top): under a distributed backend
  /// the others may still be building while it has started training and writing checkpoints.
  func buildRuns(
    _ plans: [Plan], store: HostStore, backend: Backend, tidy: Bool, keep: (Int, Int) -> Bool = { _, _ in true }
  ) throws -> [ModelRun] {
    var runs: [ModelRun] = []
    for (i, plan) in plans.enumerated() {
      let member = config.members[i]
      let t = member.train
      let optimizer = Self.optimizer(t)
      let settings = TrainSettings(
        steps: t.steps, batchSize: t.batchSize, shuffle: t.shuffle, evalEvery: t.evalEvery,
        evalBatches: t.evalBatches, checkpointEvery: t.checkpointEvery, optimizer: optimizer)
      let run = try ModelRun(
        index: i, id: member.id, spec: plan.spec, seed: member.seed, settings: settings, data: plan.data,
        shards: plan.shards, backend: backend, store: store, policy: plan.policy,
        footprints: plan.shards.map { plan.request.footprint($0) },
        workingSets: plan.shards.map { plan.request.workingSet($0) }, keep: { keep(i, $0) })
      let folder = config.job.output + "/checkpoints/" + member.id
      if tidy {
        for name in Checkpoint.removeTemporaries(in: folder) {
          log("\(member.id): removed \(folder)/\(name), left by an interrupted checkpoint")
        }
      }
      if resume,
        let unit = try Checkpoint.newest(
          in: folder, model: (member.id, member.seed), warn: { [self] in log("warning: \(member.id): \($0)") })
      {
        try Checkpoint.resume(run, from: unit)
        log("\(member.id): resumed at step \(run.step) from \(unit)")
        if tidy {
          for name in try Checkpoint.publishNewest(unit, in: folder) {
            log("\(member.id): \(folder)/\(name) now links the newest checkpoint's (a run stopped before linking it)")
          }
        }
      } else if let initPath = member.model.initPath {
        try Checkpoint.load(into: run, from: initPath)
      }
      run.pauseAt = pauseAt
      run.rungSteps = rungSteps[i]
      runs.append(run)
    }
    return runs
  }

  /// The data set as `member` reads it: one per (context, vocab), so that every model's tokens are
  /// checked against its own vocab.
  private func dataset(_ cache: inout [[Int]: Dataset], _ member: ModelMember) throws -> Dataset {
    let context = member.model.kind == .gpt ? member.model.context : 0
    let vocab = member.model.kind == .gpt ? member.model.vocab : 256
    if let d = cache[[context, vocab]] { return d }
    let d = config.data
    if member.model.kind == .gpt && d.format == .text && vocab < 256 {
      // The job file's vocab is what is wrong, not the data file.
      throw InputError(
        file: config.file, line: config.line(table: "model", key: "vocab"),
        "\(member.id): format \"text\" data has 256 byte values, but vocab = \(vocab)")
    }
    let spec = DataSpec(
      format: d.format, path: d.path, validationFraction: d.validationFraction,
      context: max(context, 1), vocab: vocab,
      labelColumn: d.labelColumn, featureScale: Float(d.featureScale), header: d.header,
      classes: member.model.kind == .mlp ? (member.model.classes ?? 0) : 0,
      splitSeed: d.split == .shuffled ? UInt64(d.splitSeed) : nil)
    let loaded = try Dataset.load(spec)
    cache[[context, vocab]] = loaded
    return loaded
  }

  private func modelSpec(_ m: ModelSection, dataFeatures features: Int) throws -> ModelSpec {
    if m.kind == .gpt {
      return .gpt(GPTShape(layers: m.layers, channels: m.dModel, heads: m.heads, context: m.context, vocab: m.vocab))
    }
    if let inputs = m.inputs, inputs != features {
      throw InputError(file: config.file, "[model] inputs = \(inputs), but the data has \(features) feature columns")
    }
    return .mlp(inputs: features, hidden: m.hidden, classes: m.classes ?? 0)
  }

  private func check(_ spec: ModelSpec, against data: Dataset, member: ModelMember) throws {
    switch (spec, data.spec.format) {
    case (.gpt, .csv):
      throw InputError(file: config.file, "[model] kind = \"gpt\" needs text or tokens data, not csv")
    case (.mlp, .text), (.mlp, .tokens):
      throw InputError(file: config.file, "[model] kind = \"mlp\" needs csv data")
    default: break
    }
  }
}
