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
public struct SchedulerView: Sendable {
  /// Seconds since the start.
  public var now: Double
  /// At most one task per model: its chain's next one, when the model is not running. Models that
  /// have finished (or diverged) have none.
  public var ready: [ReadyTask]
  /// The devices with nothing to do, by index.
  public var freeDevices: [Int]
  /// All devices.
  public var deviceCount: Int
  /// Models of the job, finished ones included.
  public var modelCount: Int
  /// Models that will never have a ready task again: done, or stopped (diverged). A model that is
  /// merely running is not in here (nor in `ready`). Baselines that run one model at a time use it
  /// to know when the next may start.
  public var finished: Set<Int>

  public init(
    now: Double, ready: [ReadyTask], freeDevices: [Int], deviceCount: Int, modelCount: Int,
    finished: Set<Int> = []
  ) {
    self.now = now
    self.ready = ready
    self.freeDevices = freeDevices
    self.deviceCount = deviceCount
    self.modelCount = modelCount
    self.finished = finished
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
}

extension Scheduler {
  public func trySchedule(_ view: SchedulerView) throws -> [Assignment] { schedule(view) }
}

public struct SchedulerError: Error, CustomStringConvertible, Sendable {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// Checks a scheduler's answer against the view it was given.
public func validate(_ assignments: [Assignment], against view: SchedulerView, scheduler: String) throws {
  var tasks = Set<Int>(), devices = Set<Int>()
  for a in assignments {
    guard view.ready.contains(where: { $0.task == a.task }) else {
      throw SchedulerError("scheduler \"\(scheduler)\" assigned \(a.task), which is not ready")
    }
    guard view.freeDevices.contains(a.device) else {
      throw SchedulerError("scheduler \"\(scheduler)\" assigned device \(a.device), which is not free")
    }
    if let ready = view.ready.first(where: { $0.task == a.task }), let allowed = ready.allowedDevices,
      !allowed.contains(a.device)
    {
      throw SchedulerError(
        "scheduler \"\(scheduler)\" assigned \(a.task) to device \(a.device); it may only run on \(allowed)")
    }
    guard tasks.insert(a.task.model).inserted, devices.insert(a.device).inserted else {
      throw SchedulerError("scheduler \"\(scheduler)\" assigned a task or a device twice: \(assignments)")
    }
  }
}
