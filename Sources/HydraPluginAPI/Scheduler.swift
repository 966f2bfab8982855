import Foundation

/// What a scheduler sees of one ready shard task: the next task of a model's chain that is not
/// running, with the runtime's estimates and where its state and input are.
public struct ReadyTask: Sendable, Equatable {
  public var task: ShardTask
  /// Estimated seconds of this task (measured times of earlier steps once there are some).
  public var estimatedSeconds: Double
  /// Estimated seconds of everything this model has left, this task included.
  public var remainingSeconds: Double
  /// Under a selection policy: estimated seconds until the model reaches its next rung (where the
  /// policy may stop it or have it wait), this task included; nil when no rung is ahead.
  public var secondsToNextRung: Double?
  /// Where the shard's state is now.
  public var state: Residency
  /// The device that ran this model's previous task (holding its input activation), if any.
  public var lastDevice: Int?
  /// When this task became ready (seconds since the start).
  public var readySince: Double
  /// The model's index in the job; shards in the model.
  public var shardCount: Int
  /// Under a backend whose devices hold shard state apart (`mpi`: one process per rank), the device
  /// holding this shard's state: its home. nil under `shm`, where every device reaches every state.
  public var home: Int?
  /// The devices this task may run on; nil: any. A backward must run where its forward left the
  /// shard's activations, so under `mpi` it is `[home]`; a forward may run elsewhere, and then the
  /// shard's state moves there (its new home) first.
  public var allowedDevices: [Int]?
  /// What running this task away from `home` costs: the bytes of the shard's state (parameters and
  /// optimizer state) and the seconds they take at the bandwidth measured between devices.
  public var moveBytes: Int = 0
  public var moveSeconds: Double = 0
  /// Where `state` is `.disk`: the seconds reading the shard's state back would take (its bytes at
  /// the host store's read rate). An order that puts resident tasks first lets a task on disk go
  /// ahead of a resident one only when its model has more than this much more work left. Infinity
  /// (the default, where the runtime does not know): every resident task goes first.
  public var restoreSeconds: Double = .infinity

  public init(
    task: ShardTask, estimatedSeconds: Double, remainingSeconds: Double, state: Residency = .host,
    lastDevice: Int? = nil, readySince: Double = 0, shardCount: Int
  ) {
    self.task = task
    self.estimatedSeconds = estimatedSeconds
    self.remainingSeconds = remainingSeconds
    self.state = state
    self.lastDevice = lastDevice
    self.readySince = readySince
    self.shardCount = shardCount
  }
}

/// A read-only picture of the job at one scheduling decision.
///
/// The ready tasks come two ways: as the list `ready` (what a view made by hand, a C-ABI scheduler
/// and `validate` use), or as `readyIndex`, the runtime's incrementally kept index with the orders
/// the built-in schedulers need (a decision in O(log n)). Either is made from the other on first use
/// (the list from the runtime's index costs O(models), once per view); a view is only valid during
/// the decision it was made for.
public struct SchedulerView: Sendable {
  /// Seconds since the start.
  public var now: Double
  /// At most one task per model: its chain's next one, when the model is not running. Models that
  /// have finished (or diverged) have none. In model order when the view was made from an index.
  public var ready: [ReadyTask] {
    get { storage.list() }
    set { storage = ReadyStorage(list: newValue) }
  }
  /// The devices with nothing to do, by index.
  public var freeDevices: [Int]
  /// All devices.
  public var deviceCount: Int
  /// Models of the job, finished ones included.
  public var modelCount: Int
  /// Models that will never have a ready task again: done, or stopped (diverged). A model that is
  /// merely running is not in here (nor in `ready`). Baselines that run one model at a time use it
  /// to know when the next may start.
  public var finished: Set<Int> { didSet { finishedBelow = 0 } }
  /// Every model below this index is in `finished` (a runtime that knows it says so, sparing
  /// `firstUnfinishedModel` the scan from 0).
  private var finishedBelow = 0
  private var storage: ReadyStorage

  public init(
    now: Double, ready: [ReadyTask], freeDevices: [Int], deviceCount: Int, modelCount: Int,
    finished: Set<Int> = []
  ) {
    self.now = now
    self.storage = ReadyStorage(list: ready)
    self.freeDevices = freeDevices
    self.deviceCount = deviceCount
    self.modelCount = modelCount
    self.finished = finished
  }

  /// A view over the runtime's index of ready tasks (not copied: the runtime leaves it unchanged
  /// until the decision is made).
  public init(
    now: Double, readyIndex: ReadyIndex, freeDevices: [Int], deviceCount: Int, modelCount: Int,
    finished: Set<Int> = [], finishedBelow: Int = 0
  ) {
    self.now = now
    self.storage = ReadyStorage(index: readyIndex)
    self.freeDevices = freeDevices
    self.deviceCount = deviceCount
    self.modelCount = modelCount
    self.finished = finished
    self.finishedBelow = max(finishedBelow, 0)
  }

  /// The lowest model index below `modelCount` not in `finished`, if any: the model a
  /// one-model-at-a-time baseline runs.
  public var firstUnfinishedModel: Int? {
    (finishedBelow..<max(modelCount, finishedBelow)).first { !finished.contains($0) }
  }

  /// The ready tasks indexed: the runtime's, or one built (once) from `ready`; nil when `ready`
  /// names a model twice, which only the list can describe.
  public var readyIndex: ReadyIndex? { storage.index(modelCount: modelCount) }

  /// How many tasks are ready.
  public var readyCount: Int { storage.count }

  /// Model `m`'s ready task, if it has one (the first listed, if `ready` names it twice).
  public func readyTask(ofModel m: Int) -> ReadyTask? {
    if let index = readyIndex { return index[model: m] }
    return ready.first { $0.task.model == m }
  }
}

/// The two forms of a view's ready tasks, each made from the other on first use.
final class ReadyStorage: @unchecked Sendable {
  private let lock = NSLock()
  private var _list: [ReadyTask]?
  private var _index: ReadyIndex?
  private var triedIndex = false

  init(list: [ReadyTask]) { _list = list }
  init(index: ReadyIndex) {
    _index = index
    triedIndex = true
    index.register(self)
  }

  /// `index` is about to change: keep its tasks as they are now, as a list (indexed again on
  /// demand).
  func detach(from index: ReadyIndex) {
    lock.lock()
    defer { lock.unlock() }
    guard _index === index else { return }
    if _list == nil { _list = index.all }
    _index = nil
    triedIndex = false
  }

  var count: Int {
    lock.lock()
    defer { lock.unlock() }
    return _index?.count ?? _list?.count ?? 0
  }

  func list() -> [ReadyTask] {
    lock.lock()
    defer { lock.unlock() }
    if let _list { return _list }
    let list = _index?.all ?? []
    _list = list
    return list
  }

  func index(modelCount: Int) -> ReadyIndex? {
    lock.lock()
    defer { lock.unlock() }
    if !triedIndex {
      triedIndex = true
      _index = ReadyIndex(_list ?? [], modelCount: modelCount)
    }
    return _index
  }
}

/// Run `task` on `device`.
public struct Assignment: Sendable, Equatable, CustomStringConvertible {
  public var task: ShardTask
  public var device: Int
  public init(task: ShardTask, device: Int) {
    self.task = task
    self.device = device
  }
  public var description: String { "\(task) -> device \(device)" }
}

/// Decides which ready shard task runs on which free device.
///
/// The runtime calls `schedule` whenever a device is free and a task is ready. Each assignment
/// must name a task from `view.ready` and a device from `view.freeDevices`, each at most once.
/// Returning nothing leaves the free devices idle until the next completion; a scheduler that
/// leaves every device idle with tasks ready is an error (the run would never end).
public protocol Scheduler: AnyObject {
  var name: String { get }
  func schedule(_ view: SchedulerView) -> [Assignment]
  /// `schedule`, for a scheduler that can fail (one loaded through the C ABI, whose callback reports
  /// an error or answers out of range): the error stops the job. The runtime calls this one; by
  /// default it is `schedule`.
  func trySchedule(_ view: SchedulerView) throws -> [Assignment]
  /// Called once before the first decision with what the runtime expects of the job: each model's
  /// estimated task times and the steps it has left, and the device count. A scheduler that
  /// searches before it starts (`planned`) does it here, typically by running `simulate` over the
  /// workload; by default it does nothing. An error stops the job before anything runs.
  func plan(_ workload: Workload) throws
  /// Figures of the scheduler's own, read once when the job ends and written to `summary.json`
  /// as `coordinator.scheduler_report` (`planned`: its plan's simulated makespans and how often it
  /// planned again). By default none.
  var report: [String: Double] { get }
}

extension Scheduler {
  public func trySchedule(_ view: SchedulerView) throws -> [Assignment] { schedule(view) }
  public func plan(_ workload: Workload) throws {}
  public var report: [String: Double] { [:] }
}

/// What a scheduler may plan for: the models as the simulator takes them (steps left, estimated
/// forward and backward seconds per shard; model `m` of the job is `models[m]`, with 0 steps when it
/// has nothing left) and the devices.
public struct Workload: Sendable, Equatable {
  public var models: [SimulatedModel]
  public var devices: Int
  /// Bytes per second of a shard's state moving to a device, if the runtime knows (see `simulate`).
  public var bandwidth: Double?
  public init(models: [SimulatedModel], devices: Int, bandwidth: Double? = nil) {
    self.models = models
    self.devices = devices
    self.bandwidth = bandwidth
  }
}

public struct SchedulerError: Error, CustomStringConvertible, Sendable {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// Checks a scheduler's answer against the view it was given: O(assignments) lookups in the view's
/// index (and, for many assignments, a set of the free devices).
public func validate(_ assignments: [Assignment], against view: SchedulerView, scheduler: String) throws {
  var tasks = Set<Int>(), devices = Set<Int>()
  let free: Set<Int>? = assignments.count > 4 && view.freeDevices.count > 64 ? Set(view.freeDevices) : nil
  for a in assignments {
    let found: ReadyTask?
    if let index = view.readyIndex {
      found = index[model: a.task.model].flatMap { $0.task == a.task ? $0 : nil }
    } else {
      found = view.ready.first { $0.task == a.task }
    }
    guard let ready = found else {
      throw SchedulerError("scheduler \"\(scheduler)\" assigned \(a.task), which is not ready")
    }
    guard free?.contains(a.device) ?? view.freeDevices.contains(a.device) else {
      throw SchedulerError("scheduler \"\(scheduler)\" assigned device \(a.device), which is not free")
    }
    if let allowed = ready.allowedDevices, !allowed.contains(a.device) {
      throw SchedulerError(
        "scheduler \"\(scheduler)\" assigned \(a.task) to device \(a.device); it may only run on \(allowed)")
    }
    guard tasks.insert(a.task.model).inserted, devices.insert(a.device).inserted else {
      throw SchedulerError("scheduler \"\(scheduler)\" assigned a task or a device twice: \(assignments)")
    }
  }
}
