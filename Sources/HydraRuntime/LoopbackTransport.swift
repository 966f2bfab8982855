import Foundation
import HydraCore

/// The ranks of a distributed job as threads of one process: the test double of `Transport`, so
/// that the distributed runtime (moves, chaining, gathers, step work, failures) runs under XCTest
/// without mpirun. Make one `Loopback` per job and give each rank's thread `transport(rank:)`.
///
/// - Messages go through one queue per rank, in the order they were sent (per source and overall);
///   a send completes at once.
/// - A tensor is copied when sent: ranks share no memory, as separate processes would not (unless
///   made with `copies: false`, which hands the same object over, as ranks sharing memory could).
/// - `allGather` meets every rank's call, in order.
/// - `abort` records the code and the rank and stops that thread for good (a test cannot end the
///   process); every other rank's next `poll` or `allGather` throws, so their runtimes fail too.
///   Watch `aborted`. A harness whose rank thread ends with an error calls `fail(rank:)`, which
///   does the same without parking the thread.
public final class Loopback: @unchecked Sendable {
  public let size: Int
  /// Bytes per second reported as the measured bandwidth (it only weighs shard moves).
  public let bandwidth: Double
  private let lock = NSCondition()
  private var inboxes: [[(source: Int, message: TransportMessage)]]
  private var gathers: [Int: [[UInt8]?]] = [:]
  private var gathersLeft: [Int: Int] = [:]
  private var _abort: (code: Int32, rank: Int)?
  /// Fault injection: a tensor message for which this says true is lost on its way (sent, never
  /// delivered), as a network could lose it. Set before the ranks start.
  public var lose: ((_ key: MessageKey, _ source: Int, _ destination: Int) -> Bool)?
  /// Tensor messages lost so far.
  public var lost: [MessageKey] {
    lock.lock()
    defer { lock.unlock() }
    return _lost
  }
  private var _lost: [MessageKey] = []

  /// Whether a sent tensor is copied (as between processes) or handed over as the same object
  /// (ranks that share memory; the runtime does not touch a tensor it sent).
  public let copies: Bool

  public init(ranks: Int, bandwidth: Double = 1e9, copies: Bool = true) {
    precondition(ranks >= 1)
    size = ranks
    self.bandwidth = bandwidth
    self.copies = copies
    inboxes = Array(repeating: [], count: ranks)
  }

  public func transport(rank: Int) -> LoopbackTransport {
    precondition(rank >= 0 && rank < size)
    return LoopbackTransport(loopback: self, rank: rank)
  }

  /// The code and rank of the first `abort`, if any rank called it.
  public var aborted: (code: Int32, rank: Int)? {
    lock.lock()
    defer { lock.unlock() }
    return _abort
  }

  /// Waits until a rank aborts, at most `seconds`; true if one did.
  public func waitForAbort(seconds: Double) -> Bool {
    let deadline = Date(timeIntervalSinceNow: seconds)
    lock.lock()
    defer { lock.unlock() }
    while _abort == nil && lock.wait(until: deadline) {}
    return _abort != nil
  }

  fileprivate func deliver(_ message: TransportMessage, from source: Int, to destination: Int) throws {
    lock.lock()
    defer { lock.unlock() }
    if _abort != nil { throw RuntimeError("loopback: the job was aborted") }
    if case .tensor(let key, _) = message, let lose, lose(key, source, destination) {
      _lost.append(key)
      return
    }
    inboxes[destination].append((source, message))
  }

  fileprivate func take(_ rank: Int) throws -> [(source: Int, message: TransportMessage)] {
    lock.lock()
    defer { lock.unlock() }
    if let a = _abort { throw RuntimeError("loopback: rank \(a.rank) aborted the job (code \(a.code))") }
    defer { inboxes[rank].removeAll() }
    return inboxes[rank]
  }

  fileprivate func allGather(_ bytes: [UInt8], rank: Int, call: Int) throws -> [[UInt8]] {
    lock.lock()
    defer { lock.unlock() }
    gathers[call, default: Array(repeating: nil, count: size)][rank] = bytes
    lock.broadcast()
    while _abort == nil && gathers[call]!.contains(where: { $0 == nil }) { lock.wait() }
    if let a = _abort { throw RuntimeError("loopback: rank \(a.rank) aborted the job (code \(a.code))") }
    let all = gathers[call]!.map { $0! }
    gathersLeft[call, default: size] -= 1
    if gathersLeft[call] == 0 {
      gathers[call] = nil
      gathersLeft[call] = nil
    }
    return all
  }

  /// Rank `rank`'s thread ended with an error outside the transport (its runner threw, where the
  /// tool would have aborted the job): every other rank's next `poll` or `allGather` throws, as after
  /// an `abort`, so that their runtimes end too instead of serving for good. The calling thread is
  /// not parked.
  public func fail(rank: Int, code: Int32 = 1) {
    lock.lock()
    if _abort == nil { _abort = (code, rank) }
    lock.broadcast()
    lock.unlock()
  }

  fileprivate func abort(code: Int32, rank: Int) -> Never {
    lock.lock()
    if _abort == nil { _abort = (code, rank) }
    lock.broadcast()
    lock.unlock()
    while true { Thread.sleep(forTimeInterval: 3600) }
  }
}

/// One rank of a `Loopback`.
public final class LoopbackTransport: Transport, @unchecked Sendable {
  public let name = "loopback"
  public let rank: Int
  public var size: Int { loopback.size }
  public var hostName: String { "loopback" }
  public var bandwidth: Double { loopback.size > 1 ? loopback.bandwidth : .infinity }
  private let loopback: Loopback
  /// Collectives this rank has called (they meet by number).
  private var collectives = 0

  fileprivate init(loopback: Loopback, rank: Int) {
    self.loopback = loopback
    self.rank = rank
  }

  public func prepare(models: Int, indices: Int) throws {
    guard models >= 1 && indices >= 1 else { throw RuntimeError("loopback: prepared for \(models) x \(indices)") }
  }

  public func send(_ message: TransportMessage, to destination: Int) throws {
    // A rank may send to itself (the coordinator asks its own rank to move a shard), as under MPI.
    guard destination >= 0 && destination < size else {
      throw RuntimeError("loopback: rank \(rank) sent a message to rank \(destination)")
    }
    switch message {
    case .control:
      try loopback.deliver(message, from: rank, to: destination)
    case .tensor(_, _) where !loopback.copies:
      try loopback.deliver(message, from: rank, to: destination)
    case .tensor(let key, let tensor):
      let copy = try Tensor(shape: tensor.shape)
      copy.copy(from: tensor)
      try loopback.deliver(.tensor(key, copy), from: rank, to: destination)
    }
  }

  public func poll() throws -> [(source: Int, message: TransportMessage)] { try loopback.take(rank) }

  public var isIdle: Bool { true }

  public func allGather(_ bytes: [UInt8]) throws -> [[UInt8]] {
    collectives += 1
    return try loopback.allGather(bytes, rank: rank, call: collectives)
  }

  public func abort(code: Int32) -> Never { loopback.abort(code: code, rank: rank) }

  public func close() {}
}
