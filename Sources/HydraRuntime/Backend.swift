import HydraCore

/// A backend whose devices are separate processes (`mpi`: one per rank), each with its own memory,
/// host store and copy of every model (built identically from the job's seeds).
///
/// The coordinator runs in device 0's process. Each shard's state has a home device, where all
/// its tasks run: a backward must run where its forward left the shard's activations. A forward
/// may run elsewhere; the coordinator then moves the shard's state (and the inputs already pushed
/// to the old home) to the new home first. Tensors go straight from the device that makes them to
/// the home of the shard that needs them, never through the coordinator.
public protocol DistributedBackend: Backend {
  /// The device this process runs.
  var localDevice: Int { get }
  /// Bytes per second between two devices, measured at start (the cost of moving a shard).
  var bandwidth: Double { get }
  /// What this process's device sent to others so far: tensors and bytes.
  var tensorsSent: Int { get }
  var bytesSent: Int { get }
  /// Tensors this process holds that no task took (none once the job is over).
  var leftOver: Int { get }
  /// Every process, together (a collective): whether every process passed the same `value`. Also
  /// the point where no process goes on until all have got there.
  func agree(on value: UInt64) throws -> Bool
  /// Every process, together: the failures (`failure`, nil where there was none) of every process,
  /// by device, on every process. So that a job whose start failed on some process stops everywhere
  /// with that process's message printed by device 0.
  func failures(_ failure: String?) throws -> [(device: Int, message: String)]
  /// Every process, before training: the job's models as this process built them, the device
  /// they run on here, the host store holding their state, and where each shard's state starts,
  /// `homes[model][shard]` (the same placement on every process).
  func attach(runs: [ModelRun], device: Device, store: HostStore, homes: [[Int]]) throws
  /// Where each shard of `model` has its state now: the job's one table of homes. The coordinator's
  /// process keeps it (`move`); another process learns a model's homes with each task of it.
  func homes(of model: Int) -> [Int]
  /// Coordinator: runs `task` on `device` (another process), expected to take `expectedSeconds`;
  /// `completion` runs on a backend thread once the task finished there. `movedFrom` is the device
  /// its shard's state comes from when it just moved there.
  func runRemote(
    _ task: ShardTask, expectedSeconds: Double, movedFrom: Int?, on device: Int,
    completion: @escaping (RemoteOutcome) -> Void)
  /// Before `task` runs in this process; when its shard just moved here, `movedFrom` is the device
  /// it came from (its state is received first).
  func willRun(_ task: ShardTask, of run: ModelRun, movedFrom: Int?) throws
  /// Coordinator: `shard` of `model` leaves its home for `to`, before its forward of `step` there;
  /// the table says `to` from now on. Returns the home it left.
  func move(model: Int, shard: Int, step: Int, to: Int) -> Int
  /// Coordinator: copies the current state of every shard of `run` whose home is another device into
  /// this process's copy (for an evaluation or a checkpoint): the parameters, and their optimizer
  /// state with `optimizerState` (a checkpoint). The model must not be running.
  func gather(_ run: ModelRun, optimizerState: Bool) throws
  /// What a completed step needs beside training (an evaluation, a checkpoint), done by the device
  /// where the step ran with the model's state gathered there. Set by the runtime in every process.
  var stepWork: ((_ run: ModelRun, _ evaluate: Bool, _ checkpoint: Bool, _ device: Device) throws -> Evaluation?)? {
    get set
  }
  /// Coordinator: has `device` (another process) gather `run`'s shards from their homes, take on
  /// the model's history (losses, evaluations) and run `stepWork`; blocks until it is done. Returns
  /// the evaluation and the seconds the work took there.
  func runStepWork(_ run: ModelRun, on device: Int, evaluate: Bool, checkpoint: Bool) throws -> (
    evaluation: Evaluation?, seconds: Double
  )
  /// Coordinator: the selection policy stopped `model` (`release`: every process lets its shards
  /// go) or has it wait at a rung (each process moves them off its device).
  func settle(model: Int, release: Bool)
  /// A model stopped in the middle of `step` (diverged): every process drops what it holds of it.
  func discardAll(model: Int, step: Int)
  /// Every device but the coordinator's: runs the tasks the coordinator sends until the job is over.
  func serve() throws
  /// Coordinator: the job is over; every other device stops and reports.
  func finish() throws -> [DeviceReport]
}

/// The job stopped on every process because some failed to start it; device 0 has printed why.
public struct JobStopped: Error, CustomStringConvertible {
  /// The failing processes' messages, by device.
  public var failures: [(device: Int, message: String)]
  /// The exit status: 2 when every failure was bad input, else 1.
  public var exitCode: Int32
  public init(failures: [(device: Int, message: String)], exitCode: Int32) {
    self.failures = failures
    self.exitCode = exitCode
  }
  public var description: String {
    failures.map { "rank \($0.device): error: \($0.message)" }.joined(separator: "\n")
  }
}
