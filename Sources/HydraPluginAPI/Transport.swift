import Foundation

/// What a message between ranks carries; with the model, index and step it names the message
/// (`MessageKey`), so that two messages in flight between the same ranks can never be confused.
public enum MessageKind: Int, CaseIterable, Sendable {
  /// Coordinator <-> device messages (`ControlMessage`).
  case control = 0
  /// A shard's forward output, going to the device that runs the next shard.
  case activation = 1
  /// The gradient w.r.t. a shard's input, going to the device that runs the previous shard backward.
  case gradient = 2
  /// A tied weight's value, from its owner shard's forward to the replica's.
  case tiedValue = 3
  /// A tied weight's replica gradient, from the replica's backward to the owner's.
  case tiedGradient = 4
  /// A shard's parameters and optimizer state, moving to its new home.
  case shardState = 5
  /// A shard's parameters (and optimizer state) copied to the device that evaluates or checkpoints.
  case gather = 6
  /// Free for tools and tests.
  case user = 7
}

/// The name of a tensor message: its kind, model, shard or tie index, and step.
public struct MessageKey: Hashable, Sendable, CustomStringConvertible {
  public var kind: MessageKind
  public var model: Int
  public var index: Int
  public var step: Int
  public init(_ kind: MessageKind, model: Int, index: Int, step: Int) {
    self.kind = kind
    self.model = model
    self.index = index
    self.step = step
  }
  public init(_ key: TransferKey) {
    let kind: MessageKind
    switch key.kind {
    case .activation: kind = .activation
    case .gradient: kind = .gradient
    case .tiedValue: kind = .tiedValue
    case .tiedGradient: kind = .tiedGradient
    }
    self.init(kind, model: key.model, index: key.index, step: key.step)
  }
  public var description: String { "\(kind) \(index) of model \(model) at step \(step)" }
}

/// One message between ranks: a control message's bytes (`ControlMessage.encoded`), or a tensor
/// under its key.
public enum TransportMessage: @unchecked Sendable {
  case control([UInt8])
  case tensor(MessageKey, Tensor)
}

/// How the ranks of a distributed job reach each other: the one thing a backend such as `mpi`
/// provides. `DistributedRuntime` does everything else (homes, moves, remote tasks, gathers,
/// failures) on top of it, the same for every transport.
///
/// Threads. `send`, `poll` and `isIdle` are called by one thread only, the runtime's progress
/// thread, never concurrently. `allGather` is a collective: every rank calls it, in the same order,
/// from the thread that runs the job, and only before the progress thread starts. `abort` may be
/// called from any thread.
///
/// Ownership. A tensor handed to `send` is the transport's until the send completes (the runtime
/// does not touch it again). A tensor `poll` returns is the runtime's.
public protocol Transport: AnyObject {
  /// "mpi", "loopback", ...: the backend's name in `summary.json`.
  var name: String { get }
  /// This process's rank, 0 ..< size; rank 0 coordinates.
  var rank: Int { get }
  var size: Int { get }
  /// The host this rank runs on (for reports).
  var hostName: String { get }
  /// Bytes per second one way between two ranks, measured at start; infinity with one rank.
  var bandwidth: Double { get }
  /// Before the first message: keys will name models 0 ..< `models` and indices 0 ..< `indices`
  /// (a transport that packs keys into fixed-width tags checks that they fit).
  func prepare(models: Int, indices: Int) throws
  /// Starts sending `message` to rank `destination` and returns at once.
  func send(_ message: TransportMessage, to destination: Int) throws
  /// Moves the sends and receives in flight on; returns the messages that have arrived whole, in
  /// the order each source sent them. Does not block.
  func poll() throws -> [(source: Int, message: TransportMessage)]
  /// No send or receive in flight.
  var isIdle: Bool { get }
  /// Every rank's `bytes`, by rank, on every rank (a collective).
  func allGather(_ bytes: [UInt8]) throws -> [[UInt8]]
  /// Ends every rank of the job with `code` (an error none can recover from).
  func abort(code: Int32) -> Never
  /// Releases the transport; nothing may be sent afterwards.
  func close()
}
