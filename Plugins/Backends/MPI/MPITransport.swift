import Foundation
import HydraPluginAPI

/// `mpi` as a `Transport`: one rank per MPI process. Only MPI lives here (the communicator, the
/// tags, non-blocking sends and receives); `DistributedRuntime` does the rest.
///
/// On the wire, every message goes on the backend's own duplicate of the job's communicator:
/// - a control message: its bytes, under the control tag;
/// - a tensor: a header of 64-bit words (step, rank, shape) and then the Float32 bytes, both under
///   the tag `TagSpace` makes of the key (MPI keeps the order of messages with one source and tag).
public final class MPITransport: Transport, @unchecked Sendable {
  public let name = "mpi"
  /// The job's communicator (its creator finalizes MPI with it).
  public let communicator: MPICommunicator
  /// The transport's own duplicate of it: every message goes there.
  private let comm: MPICommunicator
  public var rank: Int { communicator.rank }
  public var size: Int { communicator.size }
  public var hostName: String { communicator.processorName }
  public let bandwidth: Double
  private var tags: TagSpace?
  private var controlTag: Int32 = 0
  private var sends: [MPIRequest] = []
  private var receives: [(request: MPIRequest, source: Int, key: MessageKey, tensor: Tensor)] = []

  /// Starts MPI (thread level `multiple`: the progress thread and the task queue both use it) and
  /// measures the bandwidth between ranks 0 and 1.
  public static func start() throws -> MPITransport {
    try MPITransport(communicator: try MPICommunicator.initialize(required: .multiple))
  }

  public init(communicator: MPICommunicator) throws {
    self.communicator = communicator
    comm = try communicator.duplicate()
    bandwidth = try MPITransport.measureBandwidth(comm)
  }

  /// Bytes per second one way between ranks 0 and 1 (4 MiB messages bounced 4 times after one
  /// warm-up), the same on every rank. A single rank has nothing to move to: infinity.
  static func measureBandwidth(_ comm: MPICommunicator) throws -> Double {
    guard comm.size > 1 else { return .infinity }
    let bytes = 4 << 20
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 64)
    defer { buffer.deallocate() }
    buffer.initializeMemory(as: UInt8.self, repeating: 0)
    var rate = [0.0]
    try comm.barrier()
    let tag: Int32 = 1
    if comm.rank <= 1 {
      let peer = 1 - comm.rank
      var start = DispatchTime.now().uptimeNanoseconds
      for i in 0..<5 {
        if i == 1 { start = DispatchTime.now().uptimeNanoseconds }
        if comm.rank == 0 {
          try comm.send(UnsafeRawBufferPointer(buffer), to: peer, tag: tag)
          try comm.receive(into: buffer, from: peer, tag: tag)
        } else {
          try comm.receive(into: buffer, from: peer, tag: tag)
          try comm.send(UnsafeRawBufferPointer(buffer), to: peer, tag: tag)
        }
      }
      let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
      rate[0] = Double(2 * 4 * bytes) / max(seconds, 1e-9)
    }
    try rate.withUnsafeMutableBytes { try comm.broadcast($0, root: 0) }
    return rate[0]
  }

  public func prepare(models: Int, indices: Int) throws {
    let layout = try TagSpace(models: models, shards: indices, upperBound: comm.tagUpperBound)
    controlTag = try layout.tag(.control, model: 0, shard: 0, step: 0)
    tags = layout
  }

  public func send(_ message: TransportMessage, to destination: Int) throws {
    guard let tags else { throw RuntimeError("mpi: a message sent before the transport was prepared") }
    switch message {
    case .control(let bytes):
      let buffer = Bytes(bytes)
      sends.append(try comm.isend(buffer.raw, to: destination, tag: controlTag, keepAlive: buffer))
    case .tensor(let key, let tensor):
      let tag = try tags.tag(key.kind, model: key.model, shard: key.index, step: key.step)
      var words = ([Int64(key.step), Int64(tensor.shape.count)] + tensor.shape.map { Int64($0) }).map {
        $0.littleEndian
      }
      let header = Bytes(words.withUnsafeMutableBytes { Array($0) })
      sends.append(try comm.isend(header.raw, to: destination, tag: tag, keepAlive: header))
      sends.append(try comm.isend(tensor, to: destination, tag: tag))
    }
  }

  public func poll() throws -> [(source: Int, message: TransportMessage)] {
    guard let tags else { return [] }
    var arrived: [(source: Int, message: TransportMessage)] = []
    var i = 0
    while i < sends.count {
      if try sends[i].test() {
        sends.swapAt(i, sends.count - 1)
        sends.removeLast()
      } else {
        i += 1
      }
    }
    // In the order they were posted: a source's tensors under one tag arrive in order.
    i = 0
    while i < receives.count {
      if try receives[i].request.test() {
        let r = receives.remove(at: i)
        arrived.append((r.source, .tensor(r.key, r.tensor)))
      } else {
        i += 1
      }
    }
    while let status = try comm.iprobe() {
      var bytes = [UInt8](repeating: 0, count: status.count)
      try bytes.withUnsafeMutableBytes { _ = try comm.receive(into: $0, from: status.source, tag: status.tag) }
      let (kind, model, shard, _) = tags.decode(status.tag)
      if kind == .control {
        arrived.append((status.source, .control(bytes)))
        continue
      }
      let v = stride(from: 0, to: bytes.count - bytes.count % 8, by: 8).map { littleEndianWord(bytes, at: $0) }
      guard let kind, v.count >= 2 else {
        throw RuntimeError("mpi: rank \(rank) got a message it cannot read (\(status))")
      }
      let shape = v[2...].map { Int($0) }
      guard Int(v[1]) == shape.count, shape.allSatisfy({ $0 >= 0 && $0 <= Int(Int32.max) }),
        shape.reduce(1, { $0.multipliedReportingOverflow(by: $1).overflow ? .max : $0 * $1 }) <= Int(Int32.max) / 4
      else {
        throw RuntimeError("mpi: rank \(rank) got a tensor header it cannot read from rank \(status.source): \(v)")
      }
      let tensor = try Tensor(shape: shape)
      let request = try comm.irecv(into: tensor, from: status.source, tag: status.tag)
      receives.append((request, status.source, MessageKey(kind, model: model, index: shard, step: Int(v[0])), tensor))
    }
    return arrived
  }

  public var isIdle: Bool { sends.isEmpty && receives.isEmpty }

  public func allGather(_ bytes: [UInt8]) throws -> [[UInt8]] {
    // Every rank's length, then every rank's bytes from it in turn.
    var lengths = [Int](repeating: 0, count: size)
    lengths[rank] = bytes.count
    lengths = try comm.allreduce(lengths, .sum)
    var all: [[UInt8]] = []
    for r in 0..<size {
      var mine = r == rank ? bytes : [UInt8](repeating: 0, count: lengths[r])
      if !mine.isEmpty { try mine.withUnsafeMutableBytes { try comm.broadcast($0, root: r) } }
      all.append(mine)
    }
    return all
  }

  public func abort(code: Int32) -> Never { communicator.abort(code: code) }

  /// Frees the transport's communicator, then the job's (which finalizes MPI if it started it).
  public func close() {
    comm.finalize()
    communicator.finalize()
  }
}

/// Bytes in memory that stays put while MPI sends them.
private final class Bytes: @unchecked Sendable {
  let pointer: UnsafeMutableRawPointer
  let count: Int
  init(_ bytes: [UInt8]) {
    count = bytes.count
    pointer = .allocate(byteCount: max(count, 1), alignment: 8)
    bytes.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress ?? UnsafeRawPointer(pointer), byteCount: count) }
  }
  deinit { pointer.deallocate() }
  var raw: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: pointer, count: count) }
}
