import CHydraPlugin
import Foundation
import HydraRuntime

/// A transport of a plugin library as a `Transport`, under `DistributedRuntime` like "mpi".
///
/// Sends are zero-copy: the message (and a tensor's buffer, or a copy of a control message's
/// bytes) stays with this adapter under a token until the plugin calls `send_done`. Arriving
/// messages are copied during `deliver`, after their sizes are checked.
final class CTransport: Transport, @unchecked Sendable {
  let name: String
  let file: String
  private let table: hydra_transport
  private var instance: UnsafeMutableRawPointer?
  private(set) var rank = 0
  private(set) var size = 1
  private(set) var hostName = ""
  private(set) var bandwidth = Double.infinity
  /// The host table handed to the plugin, at a fixed address until `close`.
  private let host: UnsafeMutablePointer<hydra_transport_host>
  private var closed = false
  /// `create` succeeded: `close` is owed.
  private var created = false

  private struct Pending {
    var message: UnsafeMutablePointer<hydra_message>
    var tensor: Tensor?
    var bytes: UnsafeMutablePointer<UInt8>?
  }
  private var pending: [UInt64: Pending] = [:]
  private var nextToken: UInt64 = 1
  private var arrived: [(source: Int, message: TransportMessage)] = []
  private var gathered: [[UInt8]?] = []

  /// Largest tensor a plugin may deliver: the machine's memory (a larger shape is a plugin's error,
  /// not an allocation to attempt).
  private static let largestTensorBytes = Int(clamping: ProcessInfo.processInfo.physicalMemory)
  /// Largest control message (they are small: a task, a report).
  private static let largestControlBytes = 1 << 30

  init(_ table: hydra_transport, name: String, file: String) throws {
    self.table = table
    self.name = name
    self.file = file
    host = .allocate(capacity: 1)
    host.initialize(
      to: hydra_transport_host(
        host: nil, send_done: CTransport.sendDone, deliver: CTransport.deliver, gathered: CTransport.gathered))
    host.pointee.host = Unmanaged.passUnretained(self).toOpaque()
    var info = hydra_transport_info()
    var error = hydra_error()
    var made: UnsafeMutableRawPointer?
    let code = table.create!(table.context, host, &info, &made, &error)
    guard code == HYDRA_OK else {
      throw fail("create failed (code \(code)): \(pluginMessage(error))")
    }
    instance = made
    created = true
    guard info.size >= 1, info.size <= 1 << 20, (0..<info.size).contains(info.rank) else {
      throw fail("create reported rank \(info.rank) of \(info.size) ranks")
    }
    rank = Int(info.rank)
    size = Int(info.size)
    hostName = withUnsafeBytes(of: &info.host_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    if hostName.isEmpty { hostName = ProcessInfo.processInfo.hostName }
    bandwidth = info.bandwidth.isFinite && info.bandwidth > 0 ? info.bandwidth : (size == 1 ? .infinity : 1e9)
  }

  deinit {
    close()
    host.deallocate()
  }

  private func fail(_ text: String) -> PluginError { PluginError(file: file, kind: "transport", name: name, text) }

  private static func me(_ host: UnsafeMutableRawPointer?) -> CTransport {
    Unmanaged<CTransport>.fromOpaque(host!).takeUnretainedValue()
  }

  func prepare(models: Int, indices: Int) throws {
    guard let prepare = table.prepare else { return }
    var error = hydra_error()
    let code = prepare(instance, Int64(models), Int64(indices), &error)
    guard code == HYDRA_OK else { throw fail("prepare failed (code \(code)): \(pluginMessage(error))") }
  }

  func send(_ message: TransportMessage, to destination: Int) throws {
    guard (0..<size).contains(destination) else { throw fail("send to rank \(destination) of \(size)") }
    let m = UnsafeMutablePointer<hydra_message>.allocate(capacity: 1)
    m.initialize(to: hydra_message())
    var entry = Pending(message: m)
    switch message {
    case .control(let bytes):
      let copy = UnsafeMutablePointer<UInt8>.allocate(capacity: max(bytes.count, 1))
      copy.initialize(from: bytes, count: bytes.count)
      entry.bytes = copy
      m.pointee.type = HYDRA_MESSAGE_CONTROL
      m.pointee.bytes = UnsafePointer(copy)
      m.pointee.byte_count = Int64(bytes.count)
    case .tensor(let key, let tensor):
      guard tensor.shape.count <= Int(HYDRA_MAX_DIMENSIONS) else {
        m.deallocate()
        throw fail("cannot send a tensor of \(tensor.shape.count) dimensions (at most \(HYDRA_MAX_DIMENSIONS))")
      }
      entry.tensor = tensor
      m.pointee.type = HYDRA_MESSAGE_TENSOR
      m.pointee.kind = Int32(key.kind.rawValue)
      m.pointee.model = Int64(key.model)
      m.pointee.index = Int64(key.index)
      m.pointee.step = Int64(key.step)
      m.pointee.dimensions = Int64(tensor.shape.count)
      withUnsafeMutableBytes(of: &m.pointee.shape) { raw in
        for (i, d) in tensor.shape.enumerated() { raw.storeBytes(of: Int64(d), toByteOffset: 8 * i, as: Int64.self) }
      }
      m.pointee.data = UnsafePointer(tensor.data)
    }
    let token = nextToken
    nextToken += 1
    pending[token] = entry
    var error = hydra_error()
    let code = table.send!(instance, Int64(destination), m, token, &error)
    guard code == HYDRA_OK else {
      throw fail("send to rank \(destination) failed (code \(code)): \(pluginMessage(error))")
    }
  }

  private func release(_ token: UInt64) {
    guard let entry = pending.removeValue(forKey: token) else { return }
    entry.bytes?.deallocate()
    entry.message.deallocate()
  }

  func poll() throws -> [(source: Int, message: TransportMessage)] {
    var error = hydra_error()
    let code = table.poll!(instance, &error)
    guard code == HYDRA_OK else { throw fail("poll failed (code \(code)): \(pluginMessage(error))") }
    defer { arrived.removeAll() }
    return arrived
  }

  var isIdle: Bool { pending.isEmpty && table.is_idle!(instance) != 0 }

  func allGather(_ bytes: [UInt8]) throws -> [[UInt8]] {
    gathered = Array(repeating: nil, count: size)
    var error = hydra_error()
    let code = bytes.withUnsafeBufferPointer { table.all_gather!(instance, $0.baseAddress, Int64($0.count), &error) }
    guard code == HYDRA_OK else { throw fail("all_gather failed (code \(code)): \(pluginMessage(error))") }
    var all: [[UInt8]] = []
    for (r, b) in gathered.enumerated() {
      guard let b else { throw fail("all_gather reported nothing for rank \(r)") }
      all.append(b)
    }
    return all
  }

  func abort(code: Int32) -> Never {
    table.abort?(instance, code)
    exit(code)
  }

  func close() {
    guard !closed else { return }
    closed = true
    if created { table.close?(instance) }
    for token in Array(pending.keys) { release(token) }
  }

  // MARK: The host's side, called by the plugin

  private static let sendDone: @convention(c) (UnsafeMutableRawPointer?, UInt64) -> Void = { host, token in
    me(host).release(token)
  }

  private static let deliver:
    @convention(c) (UnsafeMutableRawPointer?, Int64, UnsafePointer<hydra_message>?, UnsafeMutablePointer<hydra_error>?)
      -> Int32 = { host, source, message, error in
        let t = me(host)
        do {
          guard let m = message?.pointee else { throw t.fail("deliver: NULL message") }
          t.arrived.append((try t.check(source, "delivered a message"), try t.copy(m)))
          return HYDRA_OK
        } catch let e {
          // `poll` passes it back, and the host adds the file and name then.
          write((e as? PluginError)?.message ?? "\(e)", to: error)
          return HYDRA_ERROR
        }
      }

  private static let gathered:
    @convention(c) (UnsafeMutableRawPointer?, Int64, UnsafePointer<UInt8>?, Int64, UnsafeMutablePointer<hydra_error>?)
      -> Int32 = { host, rank, bytes, count, error in
        let t = me(host)
        do {
          let r = try t.check(rank, "all_gather reported")
          guard count >= 0, count <= largestControlBytes, count == 0 || bytes != nil else {
            throw t.fail("all_gather reported \(count) bytes for rank \(rank)")
          }
          guard r < t.gathered.count else { throw t.fail("gathered outside all_gather") }
          t.gathered[r] = count == 0 ? [] : Array(UnsafeBufferPointer(start: bytes, count: Int(count)))
          return HYDRA_OK
        } catch let e {
          write((e as? PluginError)?.message ?? "\(e)", to: error)
          return HYDRA_ERROR
        }
      }

  private func check(_ rank: Int64, _ what: String) throws -> Int {
    guard (0..<Int64(size)).contains(rank) else { throw fail("\(what) rank \(rank) of \(size)") }
    return Int(rank)
  }

  /// A message as the plugin delivered it, checked and copied.
  func copy(_ m: hydra_message) throws -> TransportMessage {
    switch m.type {
    case HYDRA_MESSAGE_CONTROL:
      guard m.byte_count >= 0, m.byte_count <= Int64(CTransport.largestControlBytes),
        m.byte_count == 0 || m.bytes != nil
      else { throw fail("delivered a control message of \(m.byte_count) bytes") }
      return .control(m.byte_count == 0 ? [] : Array(UnsafeBufferPointer(start: m.bytes, count: Int(m.byte_count))))
    case HYDRA_MESSAGE_TENSOR:
      guard let kind = MessageKind(rawValue: Int(m.kind)), kind != .control else {
        throw fail("delivered a tensor of unknown kind \(m.kind)")
      }
      guard (0...Int64(HYDRA_MAX_DIMENSIONS)).contains(m.dimensions) else {
        throw fail("delivered a tensor of \(m.dimensions) dimensions (at most \(HYDRA_MAX_DIMENSIONS))")
      }
      var shapeWords = m.shape
      let shape = withUnsafeBytes(of: &shapeWords) { raw in
        (0..<Int(m.dimensions)).map { raw.load(fromByteOffset: 8 * $0, as: Int64.self) }
      }
      var count = 1
      for d in shape {
        guard d >= 0 else { throw fail("delivered a tensor of shape \(shape)") }
        let (p, overflow) = count.multipliedReportingOverflow(by: Int(d))
        guard !overflow else { throw fail("delivered a tensor of shape \(shape): too many values") }
        count = p
      }
      let (bytes, overflow) = count.multipliedReportingOverflow(by: MemoryLayout<Float>.stride)
      guard !overflow, bytes <= CTransport.largestTensorBytes else {
        throw fail("delivered a tensor of shape \(shape): larger than this machine's memory")
      }
      guard count == 0 || m.data != nil else { throw fail("delivered a tensor of shape \(shape) without data") }
      let tensor = try Tensor(shape: shape.map { Int($0) })
      if count > 0 { tensor.data.update(from: m.data!, count: count) }
      return .tensor(
        MessageKey(kind, model: Int(m.model), index: Int(m.index), step: Int(m.step)), tensor)
    default:
      throw fail("delivered a message of unknown type \(m.type)")
    }
  }
}
