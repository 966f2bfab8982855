import Foundation
import HydraCore

/// One box of the trace: a shard task (or an evaluation) on a device, in seconds since the start.
public struct TraceEvent: Sendable {
  public var device: Int
  public var model: String
  public var name: String  // "s2 fwd", "s0 bwd", "eval", "checkpoint"
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

/// CPU seconds the calling thread has used.
private func threadCPUSeconds() -> Double {
  var t = timespec()
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
  return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
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
  /// Called on the device's thread after each completed step (evaluation, checkpoints, progress),
  /// and once when a model diverges; the device stays busy meanwhile. What it returns is the
  /// step's work that needs no device (a checkpoint's file I/O): it runs on the device's writer
  /// thread, off the device, which goes on with other models' tasks; the model stays busy (no
  /// task of it is ready) until that work is done. Under a distributed backend it runs at once.
  public var afterStep: (ModelRun, Device) throws -> StepWork? = { _, _ in nil }
  public typealias StepWork = () throws -> Void
  /// One serial queue per device for the step work its steps leave (`afterStep`'s result): at
  /// most one such write per device at a time, beside the device's tasks.
  private let writers: [DispatchQueue]

  private let condition = NSCondition()
  private var _trace: [TraceEvent] = []
  private var failure: Error?
  private var origin = Date()
  /// Tasks handed to each device and not finished: at most 1, or 2 under a distributed backend,
  /// where a device's next task is decided while it runs one, so that it never waits for the
  /// coordinator's answer from another process.
  private var assigned: [Int]
  private var running: [Bool]
  /// Under a distributed backend, per model: its task in flight and the device running it, and the
  /// task after it when that was already handed to the same device (chained one ahead).
  private var inFlight: [Assignment?]
  private var chained: [Assignment?]
  /// Under a distributed backend, per device: the models whose task in flight runs there, and the
  /// models whose ready task (in the index) has its home there. The one-ahead decision looks only
  /// at the devices with room for a next task, through these: O(those devices and their models),
  /// not O(models).
  private var inFlightOn: [Set<Int>]
  private var readyByHome: [Set<Int>]
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
  /// Where each device's last box on the trace ends.
  private var lastEnd: [Double]
  private var current: [String?]
  /// Set by `requestStop`: no model starts another step.
  public private(set) var stopping = false
  /// Seconds the coordinator spent deciding (building views, asking the scheduler), and how often.
  public private(set) var decisionSeconds = 0.0
  public private(set) var decisions = 0
  /// Of `decisionSeconds`, the CPU time the coordinator's thread used (without the time it waited
  /// for a core, which on a machine with more device threads than cores is most of it), and the
  /// tasks the decisions handed out.
  public private(set) var decisionCPUSeconds = 0.0
  public private(set) var assignments = 0

  /// Runs each device's tasks (its thread, or its rank).
  public let backend: Backend
  /// The backend, when its devices are other processes (`mpi`): it keeps the one table of where
  /// each shard's state lives (its home), which the coordinator changes by moving a shard.
  private let distributed: DistributedBackend?
  /// Bytes of each shard's state, [model][shard] (what a move costs).
  private var stateBytes: [[Int]]
  /// Shard states moved between devices, and their bytes.
  public private(set) var moves = 0
  public private(set) var movedBytes = 0

  /// The ready tasks of the models at rest and the finished models, kept up to date between
  /// decisions instead of rebuilt for each (`refresh`): a model whose readiness may have changed
  /// (released, settled, stopped) is marked dirty, and the host stores' journals say which ready
  /// task's shard state moved. The devices with nothing assigned, ascending.
  private let readyIndex: ReadyIndex
  private var finishedModels = Set<Int>()
  private var dirty: [Bool]
  private var dirtyModels: [Int]
  private var idle: [Int]
  private let stores: [HostStore]
  private let modelIndex: [String: Int]
  /// For tests: every decision also rebuilds the ready tasks and the finished models from every
  /// model, as the coordinator did before it kept them, and fails the run where they disagree.
  nonisolated(unsafe) static var checksReadyIndex = false

  /// Under a distributed backend the shards' homes are the backend's (set by its `attach`).
  public init(runs: [ModelRun], devices: [Device], scheduler: Scheduler, backend: Backend) {
    precondition(backend.deviceCount == devices.count)
    self.backend = backend
    distributed = backend as? DistributedBackend
    stateBytes = runs.map { run in run.shards.indices.map { run.stateBytes(of: $0) } }
    precondition(!devices.isEmpty)
    writers = devices.indices.map { DispatchQueue(label: "hydra.device-\($0).writer") }
    self.runs = runs
    self.devices = devices
    self.scheduler = scheduler
    assigned = Array(repeating: 0, count: devices.count)
    progress = runs.map {
      Progress(id: $0.id, step: 0, steps: $0.settings.steps, loss: nil, validationLoss: nil, status: "pending")
    }
    busySeconds = Array(repeating: 0, count: devices.count)
    lastEnd = Array(repeating: 0, count: devices.count)
    current = Array(repeating: nil, count: devices.count)
    running = Array(repeating: false, count: runs.count)
    inFlight = Array(repeating: nil, count: runs.count)
    chained = Array(repeating: nil, count: runs.count)
    inFlightOn = Array(repeating: [], count: devices.count)
    readyByHome = Array(repeating: [], count: devices.count)
    lastDevice = Array(repeating: nil, count: runs.count)
    readySince = Array(repeating: 0, count: runs.count)
    readyIndex = ReadyIndex(capacity: runs.count)
    dirty = Array(repeating: true, count: runs.count)
    dirtyModels = Array(runs.indices)
    idle = Array(devices.indices)
    var seen = Set<ObjectIdentifier>()
    stores = runs.compactMap(\.hostStore).filter { seen.insert(ObjectIdentifier($0)).inserted }
    modelIndex = Dictionary(runs.enumerated().map { ($1.id, $0) }, uniquingKeysWith: { first, _ in first })
    // Until measured: FLOPs at a nominal rate (only the ratios matter).
    forwardSeconds = runs.map { run in
      run.shards.map { shard in
        TaskCost.forwardSeconds(
          shard.map { run.spec.blockCosts($0) }, batchSize: run.settings.batchSize, flopsPerSecond: 1e10)
      }
    }
    backwardSeconds = forwardSeconds.map { $0.map { TaskCost.backwardPerForward * $0 } }
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
    try scheduler.plan(workload())
    origin = Date()
    for store in stores { store.journalMoves() }
    condition.lock()
    defer { condition.unlock() }
    while failure == nil {
      let start = DispatchTime.now().uptimeNanoseconds, cpuStart = threadCPUSeconds()
      refresh()
      let readyCount = readyIndex.count
      if readyCount == 0 && !assigned.contains(where: { $0 > 0 }) && !running.contains(true) { break }
      if readyCount > 0 && !idle.isEmpty {
        // The view lives only inside `decide`, so dispatching (which changes the index) copies nothing.
        func decide() throws -> [Assignment] {
          let view = makeView()
          if Coordinator.checksReadyIndex { try checkReadyIndex() }
          let assignments = try scheduler.trySchedule(view)
          try validate(assignments, against: view, scheduler: scheduler.name)
          return assignments
        }
        var assignments: [Assignment] = []
        decisions += 1
        do {
          assignments = try decide()
          if assignments.isEmpty && !assigned.contains(where: { $0 > 0 }) && !running.contains(true) {
            throw SchedulerError(
              "scheduler \"\(scheduler.name)\" left every device idle with \(readyCount) task(s) ready")
          }
        } catch {
          failure = error
          break
        }
        for a in assignments { dispatch(a) }
      }
      if distributed != nil {
        // One task ahead: devices running a task get their next one now (at its shard's home),
        // so that it is waiting for them in their process when the current one finishes.
        let ahead = makeAheadView()
        if !ahead.ready.isEmpty && !ahead.freeDevices.isEmpty {
          var assignments: [Assignment] = []
          decisions += 1
          do {
            if Coordinator.checksReadyIndex { try checkByDevice() }
            assignments = try scheduler.trySchedule(ahead)
            try validate(assignments, against: ahead, scheduler: scheduler.name)
          } catch {
            failure = error
            break
          }
          for a in assignments { dispatch(a) }
        }
      }
      decisionSeconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
      decisionCPUSeconds += threadCPUSeconds() - cpuStart
      condition.wait()
    }
    while assigned.contains(where: { $0 > 0 }) || running.contains(true) { condition.wait() }
    if let failure { throw failure }
    // Models waiting at a rung are normal when the run stops early (a signal, or a pause at a
    // step: they continue when resumed); otherwise the policy forgot them.
    let waiting = runs.filter(\.waiting)
    let paused = runs.contains { !$0.status.isFinished && !$0.waiting && $0.step < $0.settings.steps }
    if !waiting.isEmpty && !stopping && !paused {
      throw RuntimeError(
        "the selection policy left \(waiting.map(\.id).joined(separator: ", ")) waiting at a rung with nothing else to run"
      )
    }
    return elapsed()
  }

  /// What the scheduler plans for: each model's estimated task times (FLOPs until measured) and
  /// the steps it has left (none for a model that has finished or stopped).
  private func workload() -> Workload {
    Workload(
      models: runs.indices.map { m in
        SimulatedModel(
          steps: runs[m].status.isFinished ? 0 : max(runs[m].settings.steps - runs[m].step, 0),
          forwardSeconds: forwardSeconds[m], backwardSeconds: backwardSeconds[m])
      }, devices: devices.count)
  }

  /// Under the lock: the view of a decision for the free devices, over the ready index brought up
  /// to date: O(changes since the last decision), not O(models).
  private func makeView() -> SchedulerView {
    refresh()
    var view = SchedulerView(
      now: elapsed(), readyIndex: readyIndex, freeDevices: idle, deviceCount: devices.count, modelCount: runs.count)
    view.finished = finishedModels
    return view
  }

  /// Under the lock: the ready index and the finished models, for what changed since the last call.
  private func refresh() {
    for m in dirtyModels {
      dirty[m] = false
      if !running[m], let task = runs[m].nextTask {
        indexInsert(readyTask(m, task, ahead: false))
        finishedModels.remove(m)
      } else {
        indexRemove(model: m)
        if running[m] { finishedModels.remove(m) } else { finishedModels.insert(m) }
      }
    }
    dirtyModels.removeAll(keepingCapacity: true)
    for store in stores {
      // Under a distributed backend a task's state is its home's (the journal is only drained).
      for (id, shard) in store.takeMoves() where distributed == nil {
        guard let m = modelIndex[id], var t = readyIndex[model: m], t.task.shard == shard else { continue }
        t.state = runs[m].residency(of: shard)
        t.restoreSeconds = restoreSeconds(m, shard, t.state)
        indexInsert(t)
      }
    }
  }

  /// Under the lock, after `refresh`: the index against a list built from every model. A task's
  /// state is compared apart from the rest only where no prefetch can be moving it (without a store).
  private func checkReadyIndex() throws {
    var expected: [ReadyTask] = []
    for (m, run) in runs.enumerated() where !running[m] {
      if let task = run.nextTask { expected.append(readyTask(m, task, ahead: false)) }
    }
    let finished = Set(runs.indices.filter { !running[$0] && runs[$0].nextTask == nil })
    var actual = readyIndex.all
    if !stores.isEmpty {
      for i in actual.indices where i < expected.count { actual[i].state = expected[i].state }
    }
    guard actual == expected, finished == finishedModels else {
      throw RuntimeError(
        "coordinator: the ready index disagrees with the models: \(actual) against \(expected); finished \(finishedModels.sorted()) against \(finished.sorted())"
      )
    }
  }

  /// Under the lock: `t` becomes its model's ready task, in the index and by its home.
  private func indexInsert(_ t: ReadyTask) {
    let m = t.task.model
    if let old = readyIndex[model: m]?.home { readyByHome[old].remove(m) }
    readyIndex.insert(t)
    if let home = t.home { readyByHome[home].insert(m) }
  }

  /// Under the lock: model `m` has no ready task any more.
  private func indexRemove(model m: Int) {
    if let old = readyIndex[model: m]?.home { readyByHome[old].remove(m) }
    readyIndex.remove(model: m)
  }

  /// Under the lock, in tests: the tables by device against lists built from every model.
  private func checkByDevice() throws {
    var homes = Array(repeating: Set<Int>(), count: devices.count)
    for t in readyIndex.all { if let h = t.home { homes[h].insert(t.task.model) } }
    var flying = Array(repeating: Set<Int>(), count: devices.count)
    for case let a? in inFlight { flying[a.device].insert(a.task.model) }
    guard homes == readyByHome, flying == inFlightOn else {
      throw RuntimeError(
        "coordinator: the tables by device disagree with the models: homes \(readyByHome) against \(homes), in flight \(inFlightOn) against \(flying)"
      )
    }
  }

  /// Under the lock: model `m`'s readiness may have changed.
  private func markDirty(_ m: Int) {
    guard !dirty[m] else { return }
    dirty[m] = true
    dirtyModels.append(m)
  }

  /// Under the lock: the seconds reading `shard` of model `m` back from disk would take, at its host
  /// store's read rate (for a state on disk; infinity elsewhere, where it is not used).
  private func restoreSeconds(_ m: Int, _ shard: Int, _ state: Residency) -> Double {
    guard state == .disk, let store = runs[m].hostStore else { return .infinity }
    return Double(stateBytes[m][shard]) / store.diskReadRate
  }

  /// Under the lock: what the scheduler sees of model `m`'s next task, `task`, the model at rest.
  private func readyTask(_ m: Int, _ task: ShardTask, ahead: Bool) -> ReadyTask {
    let run = runs[m]
    let (estimate, remaining) = estimates(task)
    var r = ReadyTask(
      task: task, estimatedSeconds: estimate, remainingSeconds: remaining, state: run.residency(of: task.shard),
      lastDevice: lastDevice[m], readySince: readySince[m], shardCount: run.shards.count)
    r.secondsToNextRung = toNextRung(task)
    r.restoreSeconds = restoreSeconds(m, task.shard, r.state)
    if let distributed {
      let home = distributed.homes(of: m)[task.shard]
      r.home = home
      r.state = .device(home)
      if task.direction == .backward || ahead { r.allowedDevices = [home] }
      r.moveBytes = stateBytes[m][task.shard]
      r.moveSeconds = Double(r.moveBytes) / max(distributed.bandwidth, 1)
    }
    return r
  }

  /// Under the lock, under a distributed backend: the view of a decision one task ahead. The free
  /// devices are those running one task (with room for the next), and every task may only go to its
  /// home. Built as a list of the tasks that may go to those devices, in model order: the models at
  /// rest whose home is one of them, and those whose next task can be queued behind their running
  /// one there. O(devices + those models), from the tables by device.
  private func makeAheadView() -> SchedulerView {
    refresh()
    let free = assigned.indices.filter { assigned[$0] == 1 }
    var atRest: [Int] = []
    var flying: [Int] = []
    for d in free {
      atRest.append(contentsOf: readyByHome[d])
      flying.append(contentsOf: inFlightOn[d])
    }
    var ready = atRest.sorted().compactMap { m in readyIndex[model: m].map { readyTask(m, $0.task, ahead: true) } }
    // A model whose task runs on a device that also holds its next shard: that next task can be
    // queued behind it there (it will find its input in place). Not across the loss (the model
    // may diverge there) nor the end of a step (evaluations, checkpoints, a pause come after).
    for m in flying.sorted() where running[m] && chained[m] == nil {
      guard let a = inFlight[m] else { continue }
      let run = runs[m]
      let k = run.shards.count
      guard !run.chain.computesLoss(a.task), let next = run.chain.next(after: a.task) else { continue }
      guard distributed?.homes(of: m)[next.shard] == a.device else { continue }
      // From the task itself, not the model (whose copy the running task's completion may be
      // updating).
      let (estimate, remaining) = estimates(next)
      var r = ReadyTask(
        task: next, estimatedSeconds: estimate, remainingSeconds: remaining, state: .device(a.device),
        lastDevice: a.device, readySince: elapsed(), shardCount: k)
      r.home = a.device
      r.allowedDevices = [a.device]
      r.secondsToNextRung = toNextRung(next)
      ready.append(r)
    }
    var view = SchedulerView(
      now: elapsed(), ready: ready, freeDevices: free, deviceCount: devices.count, modelCount: runs.count)
    view.finished = finishedModels
    return view
  }

  /// Under the lock: the estimated seconds of `task`, and of everything its model has left from
  /// `task` on (its step's remaining tasks, then its remaining steps).
  private func estimates(_ task: ShardTask) -> (task: Double, remaining: Double) {
    let m = task.model, chain = runs[m].chain
    let (forward, backward) = (forwardSeconds[m], backwardSeconds[m])
    let perStep = chain.seconds(from: 0, forward: forward, backward: backward)
    let rest = chain.seconds(from: chain.position(of: task), forward: forward, backward: backward)
    let estimate = task.direction == .forward ? forward[task.shard] : backward[task.shard]
    return (estimate, Double(runs[m].settings.steps - task.step - 1) * perStep + rest)
  }

  /// Under the lock: the estimated seconds from `task` to its model's next rung (the end of step
  /// `r - 1` for the first rung `r` past the task's step), or nil when none is ahead.
  private func toNextRung(_ task: ShardTask) -> Double? {
    let m = task.model, chain = runs[m].chain
    guard let rung = runs[m].rungSteps.first(where: { $0 > task.step }) else { return nil }
    let (forward, backward) = (forwardSeconds[m], backwardSeconds[m])
    let perStep = chain.seconds(from: 0, forward: forward, backward: backward)
    let rest = chain.seconds(from: chain.position(of: task), forward: forward, backward: backward)
    return rest + Double(rung - task.step - 1) * perStep
  }

  /// Under the lock: hands `a` to its device (a thread of this process, or another process).
  private func dispatch(_ a: Assignment) {
    assignments += 1
    assigned[a.device] += 1
    if assigned[a.device] == 1, let i = idle.firstIndex(of: a.device) { idle.remove(at: i) }
    indexRemove(model: a.task.model)
    if running[a.task.model] {
      chained[a.task.model] = a  // queued behind the model's task on the same device
    } else {
      inFlight[a.task.model] = a
      inFlightOn[a.device].insert(a.task.model)
    }
    running[a.task.model] = true
    let m = a.task.model
    let run = runs[m]
    current[a.device] = "\(run.id) s\(a.task.shard) \(a.task.direction == .forward ? "fwd" : "bwd") @\(a.task.step)"
    var movedFrom: Int?
    if let distributed, distributed.homes(of: m)[a.task.shard] != a.device {
      // Validated: only a forward runs away from its home, and its shard's state follows it there.
      movedFrom = distributed.move(model: m, shard: a.task.shard, step: a.task.step, to: a.device)
      moves += 1
      movedBytes += stateBytes[m][a.task.shard]
    }
    if let distributed, a.device != distributed.localDevice {
      let expected = estimates(a.task).task
      distributed.runRemote(a.task, expectedSeconds: expected, movedFrom: movedFrom, on: a.device) {
        [self] outcome in
        // On the backend's thread: the model is this coordinator's until released below.
        let completed = run.recordRemote(a.task, loss: outcome.loss)
        let end = elapsed()
        let stepOver = taskDone(
          a, run: run, completed: completed, seconds: outcome.seconds, start: max(0, end - outcome.seconds), end: end)
        taskEnded(on: a.device)
        guard stepOver else { return release(a, run: run, error: nil) }
        // A step with neither evaluation nor checkpoint only records its loss: at once. Otherwise
        // the device where the step ran does that work (`DistributedBackend.runStepWork`) while
        // this process waits for it off the backend's thread; the model stays busy until then.
        if run.status.isDiverged || !(run.evaluationDue || run.checkpointDue) {
          var error: Error?
          do { try afterStep(run, devices[a.device])?() } catch let e { error = e }
          return release(a, run: run, error: error)
        }
        DispatchQueue.global().async { [self] in
          var error: Error?
          do { try afterStep(run, devices[a.device])?() } catch let e { error = e }
          release(a, run: run, error: error)
        }
      }
      return
    }
    let device = devices[a.device]
    backend.execute(on: a.device) { [self] in
      let start = elapsed()
      var error: Error?
      condition.lock()
      let failed = failure != nil
      condition.unlock()
      var offDevice: StepWork?
      do {
        // After a failure, a task chained behind the failed one must not run.
        if failed { throw CancellationError() }
        try distributed?.willRun(a.task, of: run, movedFrom: movedFrom)
        let completed = try run.run(a.task, kernels: device.kernels, device: device.index)
        let end = elapsed()
        if taskDone(a, run: run, completed: completed, seconds: end - start, start: start, end: end) {
          offDevice = try afterStep(run, device)
        }
      } catch let e {
        error = e
      }
      taskEnded(on: a.device)
      guard let offDevice, error == nil else { return release(a, run: run, error: error) }
      if distributed != nil {
        do { try offDevice() } catch let e { error = e }
        return release(a, run: run, error: error)
      }
      writers[a.device].async { [self] in
        var error: Error?
        do { try offDevice() } catch let e { error = e }
        release(a, run: run, error: error)
      }
    }
  }

  /// Every task, wherever it ran, when it ends: its seconds and trace box; a model that diverged
  /// drops the step on every process. True when the step is over (completed, or diverged): its
  /// `afterStep` is due.
  private func taskDone(
    _ a: Assignment, run: ModelRun, completed: Bool, seconds: Double, start: Double, end: Double
  ) -> Bool {
    run.seconds += seconds
    record(a, model: run, start: start, end: end)
    let diverged = run.status.isDiverged
    if diverged { distributed?.discardAll(model: a.task.model, step: a.task.step) }
    return completed || diverged
  }

  /// Carries out the selection policy's decisions: `reporter` (whose step is ending on the calling
  /// thread) and models waiting at a rung go on, wait or stop. A decision for a model that is
  /// neither is an error (the policy may only decide at rungs). Under a distributed backend the
  /// processes holding a stopped or waiting model's shards let them go or move them off the device.
  public func settle(_ decisions: [Int: SelectionDecision], reporter: Int, policy: String) throws {
    condition.lock()
    defer { condition.unlock() }
    for (m, decision) in decisions.sorted(by: { $0.key < $1.key }) {
      let run = runs[m]
      // A waiting model may still be finishing its step on its thread (its own decision was to
      // wait, and another model's result decided it before the coordinator saw it at rest): what
      // is left of that step reads nothing a decision changes.
      guard m == reporter || run.waiting else {
        if run.status.isFinished { continue }  // it ended meanwhile: nothing to decide
        throw RuntimeError(
          "selection \"\(policy)\" decided \(decision.rawValue) for \(run.id), which is not at a rung")
      }
      switch decision {
      case .proceed:
        run.waiting = false
      case .pause:
        guard !run.waiting else { continue }
        run.waiting = true
        try run.demoteState()
        distributed?.settle(model: m, release: false)
      case .stop:
        run.stopBySelection()
        distributed?.settle(model: m, release: true)
      }
      if m != reporter { progress[m].status = run.waiting ? "waiting" : run.status.name }
      markDirty(m)
    }
    condition.signal()
  }

  /// Stops the run as soon as every model is at a step boundary (SIGTERM): a model drops its
  /// current step if no backward of it has run yet, else finishes it (and checkpoints there, as at
  /// a pause); no model starts another step. `run` then returns as usual. Any thread.
  public func requestStop() {
    condition.lock()
    defer { condition.unlock() }
    guard !stopping else { return }
    stopping = true
    for m in runs.indices where !running[m] { stop(model: m) }
    condition.broadcast()
  }

  /// Under the lock, with model `m` at rest: no step after the current one.
  private func stop(model m: Int) {
    markDirty(m)
    let run = runs[m]
    guard let next = run.nextTask else { return }
    let midStep = run.chain.position(of: next) != 0
    let dropped = run.dropCurrentStep()
    // What the dropped step left in other processes (boundaries pushed to their homes).
    if dropped && midStep { distributed?.discardAll(model: m, step: run.step) }
    run.pauseAt = min(run.pauseAt ?? .max, dropped ? run.step : run.step + 1)
  }

  /// A task handed to `device` has ended there.
  private func taskEnded(on device: Int) {
    condition.lock()
    assigned[device] -= 1
    if assigned[device] == 0 {
      current[device] = nil
      idle.insert(device, at: idle.firstIndex { $0 > device } ?? idle.count)
    }
    condition.signal()
    condition.unlock()
  }

  /// A finished task's box on the trace, and its measured time as the estimate from now on.
  private func record(_ a: Assignment, model run: ModelRun, start: Double, end: Double) {
    condition.lock()
    defer { condition.unlock() }
    // A task in another process is timed there and placed here by when its report arrived: it
    // cannot have started before the device's previous box ended.
    // Reports from other processes may be recorded out of the order they were timed in: boxes of
    // one device are kept in order and apart by construction (a box whose report came late is
    // shortened, never overlapping the one before).
    let start = max(start, lastEnd[a.device])
    let end = max(end, start)
    lastEnd[a.device] = end
    _trace.append(
      TraceEvent(
        device: a.device, model: run.id,
        name: "s\(a.task.shard) \(a.task.direction == .forward ? "fwd" : "bwd")", step: a.task.step,
        start: start, end: end))
    let m = a.task.model, s = a.task.shard
    if a.task.direction == .forward {
      forwardSeconds[m][s] = end - start
    } else {
      backwardSeconds[m][s] = end - start
    }
    busySeconds[a.device] += end - start
  }

  /// The model of `a` is at rest again (its task and anything after its step are done).
  private func release(_ a: Assignment, run: ModelRun, error: Error?) {
    let now = Progress(
      id: run.id, step: run.step, steps: run.settings.steps, loss: run.trainLosses.last,
      validationLoss: run.evaluations.last?.loss, status: run.waiting ? "waiting" : run.status.name)
    condition.lock()
    progress[a.task.model] = now
    if let error, failure == nil, !(error is CancellationError) { failure = error }
    let m = a.task.model
    if let next = chained[m] {
      // Its next task was queued behind it on the same device: the model stays busy with that.
      chained[m] = nil
      inFlightOn[a.device].remove(m)
      inFlight[m] = next
      inFlightOn[next.device].insert(m)
      condition.signal()
      condition.unlock()
      return
    }
    inFlight[m] = nil
    inFlightOn[a.device].remove(m)
    running[a.task.model] = false
    markDirty(m)
    if stopping { stop(model: m) }
    lastDevice[a.task.model] = a.device
    readySince[a.task.model] = elapsed()
    condition.signal()
    condition.unlock()
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
  public func recordEvaluation(of run: ModelRun, on device: Device, start: Double, end: Double? = nil) {
    recordStepWork("eval", of: run, on: device, start: start, end: end)
  }

  /// A box on the trace for work after a step (`eval`, `checkpoint`) on `device`, from `start`
  /// (or the device's last box's end, if later) to `end` (default: now).
  public func recordStepWork(_ name: String, of run: ModelRun, on device: Device, start: Double, end: Double? = nil) {
    condition.lock()
    defer { condition.unlock() }
    let start = max(start, lastEnd[device.index])
    let end = max(end ?? elapsed(), start)
    lastEnd[device.index] = end
    _trace.append(
      TraceEvent(device: device.index, model: run.id, name: name, step: run.step, start: start, end: end))
  }

  /// A box on the trace for step work that ran on `device`'s writer thread, off the device (a
  /// checkpoint's I/O, `afterStep`'s result), from `start` to now: on the writer's own lane,
  /// numbered after the devices (`devices.count + device`), as it overlaps the device's tasks.
  public func recordOffDeviceWork(_ name: String, of run: ModelRun, on device: Device, start: Double) {
    condition.lock()
    defer { condition.unlock() }
    _trace.append(
      TraceEvent(
        device: devices.count + device.index, model: run.id, name: name, step: run.step, start: start,
        end: max(elapsed(), start)))
  }
}
