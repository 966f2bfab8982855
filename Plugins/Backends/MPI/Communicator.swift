import CMPI
import Foundation
import HydraPluginAPI

// An owned, throwing Swift face over the few MPI calls hydra-mpi needs.
//
// Lifetime: `MPICommunicator.initialize(required:)` starts MPI once per process (MPI_Init_thread) and
// the communicator it returns finalizes it once (explicit `finalize()`, or `deinit`). All traffic goes
// over a private duplicate of MPI_COMM_WORLD, so hydra's messages can never match a receive posted by
// another library in the same process. Errors come back as codes (MPI_ERRORS_RETURN) and are thrown as
// `MPIError`, carrying the call's name and MPI's own message.

/// The thread support MPI is asked for (MPI_Init_thread's `required`) and reports (`provided`).
public enum ThreadLevel: Int, Comparable, CustomStringConvertible, Sendable {
  /// One thread in the process.
  case single = 0
  /// Several threads, but only the main thread calls MPI.
  case funneled = 1
  /// Several threads call MPI, one at a time.
  case serialized = 2
  /// Any thread calls MPI at any time.
  case multiple = 3

  var mpiValue: Int32 {
    switch self {
    case .single: return hydra_mpi_thread_single()
    case .funneled: return hydra_mpi_thread_funneled()
    case .serialized: return hydra_mpi_thread_serialized()
    case .multiple: return hydra_mpi_thread_multiple()
    }
  }

  init(mpiValue: Int32) {
    switch mpiValue {
    case hydra_mpi_thread_multiple(): self = .multiple
    case hydra_mpi_thread_serialized(): self = .serialized
    case hydra_mpi_thread_funneled(): self = .funneled
    default: self = .single
    }
  }

  public static func < (a: ThreadLevel, b: ThreadLevel) -> Bool { a.rawValue < b.rawValue }

  public var description: String {
    switch self {
    case .single: return "MPI_THREAD_SINGLE"
    case .funneled: return "MPI_THREAD_FUNNELED"
    case .serialized: return "MPI_THREAD_SERIALIZED"
    case .multiple: return "MPI_THREAD_MULTIPLE"
    }
  }
}

/// A failed MPI call: which call, MPI's error code (nil when hydra refused the call before MPI saw
/// it) and the message (MPI_Error_string for MPI's codes).
public struct MPIError: Error, CustomStringConvertible, Sendable {
  public let call: String
  public let code: Int32?
  public let message: String

  public init(call: String, code: Int32) {
    self.call = call
    self.code = code
    self.message = MPIError.string(for: code)
  }

  public init(call: String, message: String) {
    self.call = call
    self.code = nil
    self.message = message
  }

  public var description: String {
    if let code { return "\(call) failed: \(message) (MPI error \(code))" }
    return "\(call): \(message)"
  }

  /// MPI's text for an error code.
  public static func string(for code: Int32) -> String {
    var buffer = [CChar](repeating: 0, count: Int(hydra_mpi_max_error_string()) + 1)
    let length = buffer.withUnsafeMutableBufferPointer { hydra_mpi_error_string(code, $0.baseAddress!) }
    if length == 0 { return "unknown MPI error code \(code)" }
    return String(cString: buffer)
  }
}

/// Throws an `MPIError` for anything but MPI_SUCCESS.
@inline(__always)
func check(_ code: Int32, _ call: @autoclosure () -> String) throws {
  if code != hydra_mpi_success() { throw MPIError(call: call(), code: code) }
}

/// What a completed receive or a probe found: who sent it, with which tag, how many bytes.
public struct MPIMessageStatus: Equatable, Sendable, CustomStringConvertible {
  public let source: Int
  public let tag: Int32
  public let count: Int

  init(_ status: MPI_Status, call: @autoclosure () -> String) throws {
    var count: Int32 = 0
    var status = status
    try check(MPI_Get_count(&status, hydra_mpi_byte(), &count), "\(call()): MPI_Get_count")
    self.source = Int(hydra_mpi_status_source(&status))
    self.tag = hydra_mpi_status_tag(&status)
    self.count = count == hydra_mpi_undefined() ? -1 : Int(count)
  }

  public var description: String { "(source \(source), tag \(tag), \(count) bytes)" }
}

/// Reduction operators for `allreduce`.
public enum ReduceOp: Sendable {
  case sum, max, min

  var handle: MPI_Op {
    switch self {
    case .sum: return hydra_mpi_sum()
    case .max: return hydra_mpi_max()
    case .min: return hydra_mpi_min()
    }
  }
}

/// One process's handle on MPI: rank, size, point-to-point and the few collectives hydra-mpi uses.
///
/// Thread safety: with `ThreadLevel.multiple` provided, any thread may call any method at any time (MPI
/// serialises internally); with a lower level, the caller must follow that level's rules.
public final class MPICommunicator: @unchecked Sendable {
  /// Matches any source in `receive`, `irecv`, `probe`, `iprobe`.
  public static let anySource: Int = Int(hydra_mpi_any_source())
  /// Matches any tag in `receive`, `irecv`, `probe`, `iprobe`.
  public static let anyTag: Int32 = hydra_mpi_any_tag()

  /// The private duplicate of MPI_COMM_WORLD every call goes through.
  public private(set) var handle: MPI_Comm?
  public let rank: Int
  public let size: Int
  public let processorName: String
  /// The thread level MPI provided (at least the one required).
  public let threadLevel: ThreadLevel
  /// The largest tag this MPI accepts (MPI_TAG_UB; the standard promises at least 32767).
  public let tagUpperBound: Int32

  /// True when this object called MPI_Init_thread and so must call MPI_Finalize.
  private let ownsMPI: Bool
  private var finalized = false
  private let lock = NSLock()

  private static let sharedLock = NSLock()
  nonisolated(unsafe) private static weak var shared: MPICommunicator?

  /// Starts MPI for this process (or joins it if already started) and returns the communicator.
  ///
  /// Calling it again while a communicator is alive returns that same object. If MPI was started by
  /// someone else, the returned communicator does not finalize it. Throws when the provided thread
  /// level is below `required`, or when MPI has already been finalized (MPI cannot restart).
  public static func initialize(required: ThreadLevel = .multiple) throws -> MPICommunicator {
    sharedLock.lock()
    defer { sharedLock.unlock() }
    if let existing = shared {
      guard existing.threadLevel >= required else { throw levelError(required, existing.threadLevel) }
      return existing
    }
    var finalizedFlag: Int32 = 0
    try check(MPI_Finalized(&finalizedFlag), "MPI_Finalized")
    if finalizedFlag != 0 {
      throw MPIError(
        call: "MPI_Init_thread", message: "MPI was already finalized in this process; it cannot be started again")
    }
    var initialized: Int32 = 0
    try check(MPI_Initialized(&initialized), "MPI_Initialized")
    var provided: Int32 = 0
    let owns: Bool
    if initialized != 0 {
      try check(MPI_Query_thread(&provided), "MPI_Query_thread")
      owns = false
    } else {
      try check(MPI_Init_thread(nil, nil, required.mpiValue, &provided), "MPI_Init_thread")
      owns = true
    }
    // From here on, errors on MPI_COMM_WORLD come back as codes instead of aborting the job.
    _ = MPI_Comm_set_errhandler(hydra_mpi_comm_world(), hydra_mpi_errors_return())
    let level = ThreadLevel(mpiValue: provided)
    guard level >= required else {
      if owns { MPI_Finalize() }
      throw levelError(required, level)
    }
    let communicator = try MPICommunicator(threadLevel: level, ownsMPI: owns)
    shared = communicator
    return communicator
  }

  private static func levelError(_ required: ThreadLevel, _ provided: ThreadLevel) -> MPIError {
    MPIError(
      call: "MPI_Init_thread",
      message: "hydra-mpi requires \(required) but this MPI library provides only \(provided); "
        + "use an MPI built with thread support (OpenMPI: --enable-mpi-thread-multiple, the default since 3.0)")
  }

  private init(threadLevel: ThreadLevel, ownsMPI: Bool, duplicating parent: MPI_Comm? = nil) throws {
    self.threadLevel = threadLevel
    self.ownsMPI = ownsMPI
    var dup: MPI_Comm? = nil
    try check(MPI_Comm_dup(parent ?? hydra_mpi_comm_world(), &dup), "MPI_Comm_dup")
    try check(MPI_Comm_set_errhandler(dup, hydra_mpi_errors_return()), "MPI_Comm_set_errhandler")
    handle = dup
    var r: Int32 = 0
    var s: Int32 = 0
    try check(MPI_Comm_rank(dup, &r), "MPI_Comm_rank")
    try check(MPI_Comm_size(dup, &s), "MPI_Comm_size")
    rank = Int(r)
    size = Int(s)
    var name = [CChar](repeating: 0, count: Int(hydra_mpi_max_processor_name()) + 1)
    var length: Int32 = 0
    try check(MPI_Get_processor_name(&name, &length), "MPI_Get_processor_name")
    processorName = String(cString: name)
    let ub = hydra_mpi_tag_upper_bound()
    tagUpperBound = ub > 0 ? ub : 32767
  }

  deinit { finalize() }

  /// A communicator over the same ranks whose messages can never match this one's (MPI_Comm_dup):
  /// a component that receives whatever arrives (the `mpi` backend's progress thread) gets its own.
  /// It does not finalize MPI; free it (`finalize()`) before the communicator that started MPI.
  public func duplicate() throws -> MPICommunicator {
    try MPICommunicator(threadLevel: threadLevel, ownsMPI: false, duplicating: handle)
  }

  /// Frees the communicator and, if this object started MPI, calls MPI_Finalize. Safe to call more
  /// than once; nothing may be sent or received afterwards. Every request must be complete.
  public func finalize() {
    lock.lock()
    defer { lock.unlock() }
    if finalized { return }
    finalized = true
    var done: Int32 = 0
    MPI_Finalized(&done)
    if done != 0 { return }  // too late to free anything
    if handle != nil, handle != hydra_mpi_comm_null() { _ = MPI_Comm_free(&handle) }
    if ownsMPI { MPI_Finalize() }
  }

  /// Ends every rank of the job (MPI_Abort) with `code` as the exit status.
  public func abort(code: Int32 = 1) -> Never {
    MPI_Abort(finalized ? hydra_mpi_comm_world() : handle, code)
    exit(code)  // MPI_Abort does not return; this is for the compiler and for broken MPIs.
  }

  // MARK: counts

  static func count(_ bytes: Int, _ call: String) throws -> Int32 {
    guard bytes <= Int(Int32.max) else {
      throw MPIError(
        call: call, message: "a message of \(bytes) bytes exceeds MPI's 32-bit count (\(Int32.max) bytes); split it")
    }
    return Int32(bytes)
  }

  // MARK: blocking point to point

  /// Sends `buffer`'s bytes to `destination` with `tag`; returns when the buffer may be reused.
  public func send(_ buffer: UnsafeRawBufferPointer, to destination: Int, tag: Int32) throws {
    let n = try Self.count(buffer.count, "MPI_Send")
    try check(
      MPI_Send(buffer.baseAddress, n, hydra_mpi_byte(), Int32(destination), tag, handle),
      "MPI_Send(\(buffer.count) bytes to rank \(destination), tag \(tag))")
  }

  /// Receives one message into `buffer` (which must be large enough: a longer message is an error).
  /// `source` and `tag` may be `anySource` / `anyTag`; the status says which message arrived.
  @discardableResult
  public func receive(
    into buffer: UnsafeMutableRawBufferPointer, from source: Int = MPICommunicator.anySource,
    tag: Int32 = MPICommunicator.anyTag
  ) throws -> MPIMessageStatus {
    let n = try Self.count(buffer.count, "MPI_Recv")
    var status = MPI_Status()
    func call() -> String { "MPI_Recv(\(buffer.count) bytes from rank \(source), tag \(tag))" }
    try check(MPI_Recv(buffer.baseAddress, n, hydra_mpi_byte(), Int32(source), tag, handle, &status), call())
    return try MPIMessageStatus(status, call: call())
  }

  // MARK: non-blocking point to point

  /// Starts sending `buffer`; the bytes must stay valid and unchanged until the request completes.
  /// `keepAlive` (e.g. the tensor owning the bytes) is retained by the request until then.
  public func isend(
    _ buffer: UnsafeRawBufferPointer, to destination: Int, tag: Int32, keepAlive: AnyObject? = nil
  ) throws -> MPIRequest {
    let n = try Self.count(buffer.count, "MPI_Isend")
    var request: MPI_Request? = hydra_mpi_request_null()
    try check(
      MPI_Isend(buffer.baseAddress, n, hydra_mpi_byte(), Int32(destination), tag, handle, &request),
      "MPI_Isend(\(buffer.count) bytes to rank \(destination), tag \(tag))")
    return MPIRequest(
      request, kind: .send, peer: destination, tag: tag, bytes: buffer.count, expectedBytes: nil, keepAlive: keepAlive)
  }

  /// Posts a receive into `buffer`; the bytes must stay valid until the request completes. With
  /// `exactly`, completion throws unless the message had exactly that many bytes.
  public func irecv(
    into buffer: UnsafeMutableRawBufferPointer, from source: Int = MPICommunicator.anySource,
    tag: Int32 = MPICommunicator.anyTag, exactly: Int? = nil, keepAlive: AnyObject? = nil
  ) throws -> MPIRequest {
    let n = try Self.count(buffer.count, "MPI_Irecv")
    var request: MPI_Request? = hydra_mpi_request_null()
    try check(
      MPI_Irecv(buffer.baseAddress, n, hydra_mpi_byte(), Int32(source), tag, handle, &request),
      "MPI_Irecv(\(buffer.count) bytes from rank \(source), tag \(tag))")
    return MPIRequest(
      request, kind: .receive, peer: source, tag: tag, bytes: buffer.count, expectedBytes: exactly, keepAlive: keepAlive
    )
  }

  /// Blocks until a message matching `source`/`tag` can be received, without receiving it.
  public func probe(
    from source: Int = MPICommunicator.anySource, tag: Int32 = MPICommunicator.anyTag
  ) throws -> MPIMessageStatus {
    var status = MPI_Status()
    func call() -> String { "MPI_Probe(rank \(source), tag \(tag))" }
    try check(MPI_Probe(Int32(source), tag, handle, &status), call())
    return try MPIMessageStatus(status, call: call())
  }

  /// A matching message's status if one can be received now, else nil.
  public func iprobe(
    from source: Int = MPICommunicator.anySource, tag: Int32 = MPICommunicator.anyTag
  ) throws -> MPIMessageStatus? {
    var status = MPI_Status()
    var flag: Int32 = 0
    func call() -> String { "MPI_Iprobe(rank \(source), tag \(tag))" }
    try check(MPI_Iprobe(Int32(source), tag, handle, &flag, &status), call())
    return flag != 0 ? try MPIMessageStatus(status, call: call()) : nil
  }

  // MARK: collectives

  public func barrier() throws {
    try check(MPI_Barrier(handle), "MPI_Barrier")
  }

  /// Every rank's `values` combined element-wise with `op`; the result on every rank.
  public func allreduce(_ values: [Double], _ op: ReduceOp) throws -> [Double] {
    var result = [Double](repeating: 0, count: values.count)
    let n = try Self.count(values.count, "MPI_Allreduce")
    try check(MPI_Allreduce(values, &result, n, hydra_mpi_double(), op.handle, handle), "MPI_Allreduce(Double)")
    return result
  }

  public func allreduce(_ values: [Int], _ op: ReduceOp) throws -> [Int] {
    let input = values.map { Int64($0) }
    var result = [Int64](repeating: 0, count: values.count)
    let n = try Self.count(values.count, "MPI_Allreduce")
    try check(MPI_Allreduce(input, &result, n, hydra_mpi_int64(), op.handle, handle), "MPI_Allreduce(Int)")
    return result.map { Int($0) }
  }

  public func allreduce(_ value: Double, _ op: ReduceOp) throws -> Double { try allreduce([value], op)[0] }
  public func allreduce(_ value: Int, _ op: ReduceOp) throws -> Int { try allreduce([value], op)[0] }

  /// Root's bytes copied into `buffer` on every rank (all ranks pass buffers of the same size).
  public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
    let n = try Self.count(buffer.count, "MPI_Bcast")
    try check(
      MPI_Bcast(buffer.baseAddress, n, hydra_mpi_byte(), Int32(root), handle), "MPI_Bcast(\(buffer.count) bytes)")
  }

  /// Root's byte array on every rank; the other ranks need not know its length (pass anything).
  public func broadcast(_ bytes: [UInt8], root: Int) throws -> [UInt8] {
    var length = [Int64(bytes.count)]
    try length.withUnsafeMutableBytes { try broadcast($0, root: root) }
    var result = rank == root ? bytes : [UInt8](repeating: 0, count: Int(length[0]))
    try result.withUnsafeMutableBytes { try broadcast($0, root: root) }
    return result
  }

  // MARK: tensors

  /// Sends a resident tensor's Float32 bytes (its shape is not sent: both sides agree on it).
  public func send(_ tensor: Tensor, to destination: Int, tag: Int32) throws {
    try send(UnsafeRawBufferPointer(start: tensor.data, count: tensor.byteCount), to: destination, tag: tag)
  }

  /// Receives exactly `tensor.byteCount` bytes into a resident tensor; a message of another length
  /// is an error (a longer one is MPI's truncation error).
  @discardableResult
  public func receive(into tensor: Tensor, from source: Int, tag: Int32) throws -> MPIMessageStatus {
    let status = try receive(
      into: UnsafeMutableRawBufferPointer(start: tensor.data, count: tensor.byteCount), from: source, tag: tag)
    guard status.count == tensor.byteCount else {
      throw MPIError(
        call: "MPI_Recv(tensor \(tensor.shape) from rank \(source), tag \(tag))",
        message: "expected \(tensor.byteCount) bytes, the message from rank \(status.source) had \(status.count)")
    }
    return status
  }

  /// Starts sending a tensor; the request keeps the tensor alive until it completes. The tensor
  /// must not be written, moved or evicted before then.
  public func isend(_ tensor: Tensor, to destination: Int, tag: Int32) throws -> MPIRequest {
    try isend(
      UnsafeRawBufferPointer(start: tensor.data, count: tensor.byteCount), to: destination, tag: tag,
      keepAlive: tensor)
  }

  /// Posts a receive of exactly `tensor.byteCount` bytes into the tensor; the request keeps it alive.
  public func irecv(into tensor: Tensor, from source: Int, tag: Int32) throws -> MPIRequest {
    try irecv(
      into: UnsafeMutableRawBufferPointer(start: tensor.data, count: tensor.byteCount), from: source, tag: tag,
      exactly: tensor.byteCount, keepAlive: tensor)
  }
}

/// A pending non-blocking send or receive. Complete it with `wait()` or `test()`. A request dropped
/// before completing is never leaked: a receive is cancelled (then waited for), a send is waited for.
public final class MPIRequest: @unchecked Sendable {
  enum Kind { case send, receive }

  private var handle: MPI_Request?
  private let kind: Kind
  private let peer: Int
  private let tag: Int32
  private let bytes: Int
  private let expectedBytes: Int?
  private var keepAlive: AnyObject?
  /// The status once complete (for a send: source and tag are not meaningful).
  public private(set) var status: MPIMessageStatus?

  init(
    _ handle: MPI_Request?, kind: Kind, peer: Int, tag: Int32, bytes: Int, expectedBytes: Int?, keepAlive: AnyObject?
  ) {
    self.handle = handle
    self.kind = kind
    self.peer = peer
    self.tag = tag
    self.bytes = bytes
    self.expectedBytes = expectedBytes
    self.keepAlive = keepAlive
  }

  /// What this request is, for error messages (built only when one is thrown).
  private var call: String {
    kind == .send
      ? "MPI_Isend(\(bytes) bytes to rank \(peer), tag \(tag))"
      : "MPI_Irecv(\(bytes) bytes from rank \(peer), tag \(tag))"
  }

  public var isComplete: Bool { handle == hydra_mpi_request_null() }

  /// Blocks until the transfer is done; for a receive, returns who sent what.
  @discardableResult
  public func wait() throws -> MPIMessageStatus? {
    if isComplete { return status }
    var raw = MPI_Status()
    let code = MPI_Wait(&handle, &raw)
    keepAlive = nil
    try check(code, "MPI_Wait(\(call))")
    return try finish(raw)
  }

  /// True when the transfer is done (and then `status` is set); never blocks.
  public func test() throws -> Bool {
    if isComplete { return true }
    var raw = MPI_Status()
    var flag: Int32 = 0
    try check(MPI_Test(&handle, &flag, &raw), "MPI_Test(\(call))")
    if flag == 0 { return false }
    keepAlive = nil
    _ = try finish(raw)
    return true
  }

  private func finish(_ raw: MPI_Status) throws -> MPIMessageStatus? {
    guard kind == .receive else { return nil }
    let s = try MPIMessageStatus(raw, call: call)
    status = s
    if let expectedBytes, s.count != expectedBytes {
      throw MPIError(
        call: call, message: "expected \(expectedBytes) bytes, the message from rank \(s.source) had \(s.count)")
    }
    return s
  }

  deinit {
    guard !isComplete else { return }
    if kind == .receive { _ = MPI_Cancel(&handle) }
    var raw = MPI_Status()
    _ = MPI_Wait(&handle, &raw)
  }
}

/// Waits for every request (all of them, even after one fails); rethrows the first error.
public func waitAll(_ requests: [MPIRequest]) throws {
  var first: Error?
  for request in requests {
    do { try request.wait() } catch { if first == nil { first = error } }
  }
  if let first { throw first }
}
