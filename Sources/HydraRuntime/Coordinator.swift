import Foundation
import HydraCore

/// One box of the trace: a shard task (or an evaluation) on a device, in seconds since the start.
public struct TraceEvent: Sendable {
  public var device: Int
  public var model: String
  public var name: String  // "s2 fwd", "s0 bwd", "eval"
  public var step: Int
  public var start: Double
  public var end: Double
  public init(device: Int, model: String, name: String, step: Int, start: Double, end: Double) {
    self.device = device
    self.model = model
    self.name = name
    self.step = step
    self.start = start
    self.end = end
  }
}

/// Keeps every device busy with some model's next shard task, as the scheduler plugin decides.
///
/// The coordinator holds each model's progress and its estimates (measured task times, updated as
/// tasks finish) and, whenever a device is free and a model has a task ready, asks the scheduler
/// what runs where. Each device runs its tasks on its own thread; within a model the chain fixes
/// the order, so the results never depend on the schedule.
public final class Coordinator: @unchecked Sendable {
  public let runs: [ModelRun]
  public let devices: [Device]
  public let scheduler: Scheduler
  /// Bring the next task's shard off disk while the current task computes.
  public let doubleBuffering: Bool
  /// Called on the device's thread after each completed step (evaluation, checkpoints, progress),
  /// and once when a model diverges; the device stays busy meanwhile.
  public var afterStep: (ModelRun, Device) throws -> Void = { _, _ in }

  private let condition = NSCondition()
  private var _trace: [TraceEvent] = []
  private var failure: Error?
  private var origin = Date()
  private var busy: [Bool]
  private var running: [Bool]
  private var lastDevice: [Int?]
  private var readySince: [Double]
  /// Estimated seconds of each model's shard tasks: [model][shard], forward and backward.
  private var forwardSeconds: [[Double]]
  private var backwardSeconds: [[Double]]
  /// Per model, as of its last finished task: read by other threads (the live view) without
  /// touching the model itself, which only the device running it may read.
  public struct Progress: Sendable {
    public var id: String
    public var step: Int
    public var steps: Int
    public var loss: Double?
    public var validationLoss: Double?
    public var status: String
  }
  private var progress: [Progress]
  /// Per device: seconds spent on tasks, and what it is running now.
  private var busySeconds: [Double]
  private var current: [String?]
  /// Seconds the coordinator spent deciding (building views, asking the scheduler), and how often.
  public private(set) var decisionSeconds = 0.0
  public private(set) var decisions = 0

  /// Runs each device's tasks (its thread, or its rank).
  public let backend: Backend

  public init(runs: [ModelRun], devices: [Device], scheduler: Scheduler, backend: Backend, doubleBuffering: Bool = true)
  {
    precondition(backend.deviceCount == devices.count)
    self.backend = backend
    precondition(!devices.isEmpty)
    self.runs = runs
    self.devices = devices
    self.scheduler = scheduler
    self.doubleBuffering = doubleBuffering
    busy = Array(repeating: false, count: devices.count)
    progress = runs.map {
      Progress(id: $0.id, step: 0, steps: $0.settings.steps, loss: nil, validationLoss: nil, status: "pending")
    }
    busySeconds = Array(repeating: 0, count: devices.count)
    current = Array(repeating: nil, count: devices.count)
    running = Array(repeating: false, count: runs.count)
    lastDevice = Array(repeating: nil, count: runs.count)
    readySince = Array(repeating: 0, count: runs.count)
    // Until measured: FLOPs at a nominal rate (only the ratios matter), a backward twice a forward.
    forwardSeconds = runs.map { run in
      run.shards.map { shard in
        Double(shard.reduce(0) { $0 + run.spec.blockCosts($1).forwardFlopsPerSample } * run.settings.batchSize) / 1e10
      }
    }
    backwardSeconds = forwardSeconds.map { $0.map { 2 * $0 } }
  }

  public var trace: [TraceEvent] {
    condition.lock()
    defer { condition.unlock() }
    return _trace
  }

  public func elapsed() -> Double { Date().timeIntervalSince(origin) }

  /// Trains every model; returns the makespan in seconds. The first error stops every device
  /// after its current task and is rethrown.
  public func run() throws -> Double {
    origin = Date()
    condition.lock()
    defer { condition.unlock() }
    while failure == nil {
      let start = DispatchTime.now().uptimeNanoseconds
      let view = makeView()
      if view.ready.isEmpty && !busy.contains(true) { break }
      if !view.ready.isEmpty && !view.freeDevices.isEmpty {
        let assignments = scheduler.schedule(view)
        decisions += 1
        do {
          try validate(assignments, against: view, scheduler: scheduler.name)
          if assignments.isEmpty && !busy.contains(true) {
            throw SchedulerError(
              "scheduler \"\(scheduler.name)\" left every device idle with \(view.ready.count) task(s) ready")
          }
        } catch {
          failure = error
          break
        }
        for a in assignments { dispatch(a) }
      }
      decisionSeconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
      condition.wait()
    }
    while busy.contains(true) { condition.wait() }
    if let failure { throw failure }
    return elapsed()
  }

  /// Under the lock.
  private func makeView() -> SchedulerView {
    var ready: [ReadyTask] = []
    for (m, run) in runs.enumerated() where !running[m] {
      guard let task = run.nextTask else { continue }
      let k = run.shards.count
      let perStep = (0..<k).reduce(0.0) { $0 + forwardSeconds[m][$1] + backwardSeconds[m][$1] }
      var done = 0.0
      for p in 0..<run.position {
        done += p < k ? forwardSeconds[m][p] : backwardSeconds[m][2 * k - 1 - p]
      }
      let estimate = task.direction == .forward ? forwardSeconds[m][task.shard] : backwardSeconds[m][task.shard]
      ready.append(
        ReadyTask(
          task: task, estimatedSeconds: estimate,
          remainingSeconds: Double(run.settings.steps - run.step) * perStep - done,
          state: run.residency(of: task.shard),
          lastDevice: lastDevice[m], readySince: readySince[m], shardCount: k))
    }
    // A running model is its device thread's alone: only models at rest are looked at.
    let finished = Set(runs.indices.filter { !running[$0] && runs[$0].nextTask == nil })
    var view = SchedulerView(
      now: elapsed(), ready: ready, freeDevices: busy.indices.filter { !busy[$0] },
      deviceCount: devices.count, modelCount: runs.count)
    view.finished = finished
    return view
  }

  /// Under the lock: hands `a` to its device's thread.
  private func dispatch(_ a: Assignment) {
    busy[a.device] = true
    running[a.task.model] = true
    let run = runs[a.task.model]
    current[a.device] = "\(run.id) s\(a.task.shard) \(a.task.direction == .forward ? "fwd" : "bwd") @\(a.task.step)"
    let device = devices[a.device]
    backend.execute(on: a.device) { [self] in
      let start = elapsed()
      var error: Error?
      do {
        if doubleBuffering, let after = run.taskAfterNext, after.shard != a.task.shard {
          run.prefetch(after.shard, to: device.index, keeping: a.task.shard)
        }
        let completed = try run.run(a.task, kernels: device.kernels, device: device.index)
        let end = elapsed()
        run.seconds += end - start
        condition.lock()
        _trace.append(
          TraceEvent(
            device: device.index, model: run.id,
            name: "s\(a.task.shard) \(a.task.direction == .forward ? "fwd" : "bwd")", step: a.task.step,
            start: start, end: end))
        let m = a.task.model, s = a.task.shard
        if a.task.direction == .forward {
          forwardSeconds[m][s] = end - start
        } else {
          backwardSeconds[m][s] = end - start
        }
        busySeconds[a.device] += end - start
        condition.unlock()
        if completed || run.status.name == "diverged" { try afterStep(run, device) }
      } catch let e {
        error = e
      }
      let now = Progress(
        id: run.id, step: run.step, steps: run.settings.steps, loss: run.trainLosses.last,
        validationLoss: run.evaluations.last?.loss, status: run.status.name)
      condition.lock()
      progress[a.task.model] = now
      if let error, failure == nil { failure = error }
      busy[a.device] = false
      current[a.device] = nil
      running[a.task.model] = false
      lastDevice[a.task.model] = a.device
      readySince[a.task.model] = elapsed()
      condition.signal()
      condition.unlock()
    }
  }

  public func modelSnapshot() -> [Progress] {
    condition.lock()
    defer { condition.unlock() }
    return progress
  }

  /// What each device is doing and how busy it has been so far (for the live view).
  public func deviceSnapshot() -> [(busyFraction: Double, task: String?)] {
    condition.lock()
    defer { condition.unlock() }
    let t = max(elapsed(), 1e-9)
    return devices.indices.map { (min(1, busySeconds[$0] / t), current[$0]) }
  }

  /// Records an evaluation box on the trace.
  public func recordEvaluation(of run: ModelRun, on device: Device, start: Double) {
    condition.lock()
    _trace.append(
      TraceEvent(device: device.index, model: run.id, name: "eval", step: run.step, start: start, end: elapsed()))
    condition.unlock()
  }
}
