import Foundation

/// What passes between shard tasks, named so that transfers of different models, boundaries,
/// tied weights and steps can never be confused.
public struct TransferKey: Hashable, Sendable, CustomStringConvertible {
  public enum Kind: Int, Sendable {
    /// The output of shard `index` (the input of shard `index + 1`).
    case activation
    /// The gradient of that output, from shard `index + 1`'s backward to shard `index`'s.
    case gradient
    /// Tied weight `index`: the owner's value, for the replica's forward.
    case tiedValue
    /// Tied weight `index`: the replica's gradient, for the owner's backward.
    case tiedGradient
  }
  public var kind: Kind
  public var model: Int
  public var index: Int
  public var step: Int
  public init(_ kind: Kind, model: Int, index: Int, step: Int) {
    self.kind = kind
    self.model = model
    self.index = index
    self.step = step
  }
  public var description: String { "\(kind) \(index) of model \(model) at step \(step)" }
}

/// Moves work and tensors between devices.
///
/// Control: the coordinator hands a device a task with `execute`; the work reports back itself
/// (under `shm` on the device's thread, under `mpi` by a message to the coordinator's rank).
/// Tensors: the device that makes one `post`s it and keeps it; the device that needs it `fetch`es
/// it directly from there (never through the coordinator), as often as it needs it, until some
/// device `discard`s it. Under `shm` a fetch is the same reference; under `mpi` a message.
public protocol Backend: AnyObject {
  var name: String { get }
  /// The devices tasks run on (`shm`: threads of this process; `mpi`: one per rank).
  var deviceCount: Int { get }
  /// Runs `work` on `device`, after the work handed to it before.
  func execute(on device: Int, _ work: @escaping () -> Void)
  /// Makes `tensor` available under `key`, held by `device`, for a task of shard `consumer` of the
  /// same model (under `mpi` it is pushed at once to the device holding that shard).
  func post(_ tensor: Tensor, key: TransferKey, from device: Int, for consumer: Int) throws
  /// The tensor posted under `key`, for use on `device`.
  func fetch(_ key: TransferKey, to device: Int) throws -> Tensor
  /// Nothing needs the tensor under `key` any more; its holder frees it.
  func discard(_ key: TransferKey)
  /// Whether a posted tensor stays in this process until discarded (`shm`: a fetch is the same
  /// object), so that the host store may hold it, and spill it, between tasks. Otherwise it is
  /// sent away or received afresh, and waits in RAM outside the store.
  var tensorsStayInProcess: Bool { get }
}

extension Backend {
  public var tensorsStayInProcess: Bool { false }
}

/// What a task that ran in another process reported.
public struct RemoteOutcome: Sendable {
  /// Seconds the task computed there.
  public var seconds: Double
  /// The training loss, from a last shard's forward.
  public var loss: Double?
  public init(seconds: Double, loss: Double?) {
    self.seconds = seconds
    self.loss = loss
  }
}

/// What another process's device reports when the job ends (for `summary.json`).
public struct DeviceReport: Sendable {
  public var device: Int
  public var peakBytes: Int
  public var storePeakBytes: Int
  public var bytesWrittenToDisk: Int
  public var bytesReadFromDisk: Int
  public var host: String
  /// Tensors (and bytes) the device sent to other devices.
  public var tensorsSent = 0
  public var bytesSent = 0
  /// Tensors the device still held when the job ended (none, unless a message was lost or unused).
  public var leftOver = 0
  /// The copies between the device's memory and the host, as its kernels plugin counted them
  /// (none for a plugin computing on host memory).
  public var traffic = DeviceTraffic()
  public init(
    device: Int, peakBytes: Int, storePeakBytes: Int, bytesWrittenToDisk: Int, bytesReadFromDisk: Int, host: String
  ) {
    self.device = device
    self.peakBytes = peakBytes
    self.storePeakBytes = storePeakBytes
    self.bytesWrittenToDisk = bytesWrittenToDisk
    self.bytesReadFromDisk = bytesReadFromDisk
    self.host = host
  }
}
