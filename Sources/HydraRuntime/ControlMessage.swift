import Foundation

/// The messages between the coordinator (rank 0) and the other ranks of a distributed job, encoded
/// in one place (`encoded`, `init(decoding:)`). Tensors travel as their own messages
/// (`TransportMessage.tensor`), never inside these.
public enum ControlMessage: Sendable, Equatable {
  /// Coordinator to a device: run `task`; the model's shards live at `homes`; the shard's state
  /// comes from `movedFrom` when it just moved there.
  case run(ShardTask, movedFrom: Int?, homes: [Int])
  /// A device to the coordinator: `task` is done, in `seconds`; a last shard's forward brings the
  /// training loss.
  case done(ShardTask, seconds: Double, loss: Double?)
  /// Coordinator to a shard's home: send the shard's state to `to` for its forward of `step`.
  case move(model: Int, shard: Int, step: Int, to: Int)
  /// Send the shard's state (or its values alone) to the sender, as of `step`.
  case gather(model: Int, shard: Int, step: Int, valuesOnly: Bool)
  /// A model stopped in the middle of `step`: drop every tensor of it.
  case drop(model: Int, step: Int)
  /// Coordinator to a device: the job is over; report and stop.
  case stop
  /// A device's report at the end.
  case bye(DeviceReport)
  /// A device failed with `message`; the coordinator prints it and ends the job with `code`.
  case fail(code: Int32, message: String)
  /// Coordinator to every device: the selection policy stopped `model` (`release`: let its shards
  /// go) or has it wait at a rung (move them off the device).
  case settle(model: Int, release: Bool)
  /// Coordinator to the device where a model's step ran: gather the model (its shards at `homes`),
  /// take on its history, and evaluate and/or checkpoint it.
  case work(
    model: Int, step: Int, evaluate: Bool, checkpoint: Bool, homes: [Int], trainLosses: [Double],
    evaluations: [Evaluation])
  /// The outcome of `work`.
  case workDone(model: Int, evaluation: Evaluation?, seconds: Double)
  /// A rank saw these ranks of its host die.
  case died([Int])

  private enum Op: UInt8 {
    case run = 1, done, move, gather, drop, stop, bye, fail, work, workDone, died, settle
  }

  /// The bytes on the wire: an op byte, then 64-bit little-endian words (Doubles bit for bit,
  /// strings as a length and UTF-8 bytes).
  public var encoded: [UInt8] {
    var w = Writer()
    switch self {
    case .run(let task, let movedFrom, let homes):
      w.op(.run)
      w.task(task)
      w.int(movedFrom ?? -1)
      w.ints(homes)
    case .done(let task, let seconds, let loss):
      w.op(.done)
      w.task(task)
      w.double(seconds)
      w.optionalDouble(loss)
    case .move(let model, let shard, let step, let to):
      w.op(.move)
      for x in [model, shard, step, to] { w.int(x) }
    case .gather(let model, let shard, let step, let valuesOnly):
      w.op(.gather)
      for x in [model, shard, step] { w.int(x) }
      w.bool(valuesOnly)
    case .drop(let model, let step):
      w.op(.drop)
      w.int(model)
      w.int(step)
    case .stop:
      w.op(.stop)
    case .bye(let r):
      w.op(.bye)
      for x in [r.device, r.peakBytes, r.storePeakBytes, r.bytesWrittenToDisk, r.bytesReadFromDisk] { w.int(x) }
      for x in [r.tensorsSent, r.bytesSent, r.leftOver] { w.int(x) }
      let t = r.traffic
      for x in [t.hostToDeviceCopies, t.hostToDeviceBytes, t.deviceToHostCopies, t.deviceToHostBytes] { w.int(x) }
      for x in [t.deviceToDeviceCopies, t.deviceToDeviceBytes] { w.int(x) }
      w.string(r.host)
    case .fail(let code, let message):
      w.op(.fail)
      w.int(Int(code))
      w.string(message)
    case .work(let model, let step, let evaluate, let checkpoint, let homes, let losses, let evaluations):
      w.op(.work)
      w.int(model)
      w.int(step)
      w.bool(evaluate)
      w.bool(checkpoint)
      w.ints(homes)
      w.int(losses.count)
      for l in losses { w.double(l) }
      w.int(evaluations.count)
      for e in evaluations { w.evaluation(e) }
    case .workDone(let model, let evaluation, let seconds):
      w.op(.workDone)
      w.int(model)
      w.bool(evaluation != nil)
      w.evaluation(evaluation ?? Evaluation(step: 0, loss: 0, accuracy: 0))
      w.double(seconds)
    case .died(let ranks):
      w.op(.died)
      w.ints(ranks)
    case .settle(let model, let release):
      w.op(.settle)
      w.int(model)
      w.bool(release)
    }
    return w.bytes
  }

  /// Reads a message `encoded` wrote; anything else (cut short, an unknown op, a count beyond the
  /// bytes) is an error that names the sender.
  public init(decoding bytes: [UInt8], from source: Int) throws {
    var r = Reader(bytes: bytes, source: source)
    guard let op = Op(rawValue: try r.byte()) else { throw r.bad("an unknown kind \(bytes[0])") }
    switch op {
    case .run:
      let task = try r.task()
      let movedFrom = try r.int()
      self = .run(task, movedFrom: movedFrom >= 0 ? movedFrom : nil, homes: try r.ints())
    case .done:
      self = .done(try r.task(), seconds: try r.double(), loss: try r.optionalDouble())
    case .move:
      self = .move(model: try r.int(), shard: try r.int(), step: try r.int(), to: try r.int())
    case .gather:
      self = .gather(model: try r.int(), shard: try r.int(), step: try r.int(), valuesOnly: try r.bool())
    case .drop:
      self = .drop(model: try r.int(), step: try r.int())
    case .stop:
      self = .stop
    case .bye:
      let n = try (0..<14).map { _ in try r.int() }
      var report = DeviceReport(
        device: n[0], peakBytes: n[1], storePeakBytes: n[2], bytesWrittenToDisk: n[3], bytesReadFromDisk: n[4],
        host: try r.string())
      report.tensorsSent = n[5]
      report.bytesSent = n[6]
      report.leftOver = n[7]
      report.traffic.hostToDeviceCopies = n[8]
      report.traffic.hostToDeviceBytes = n[9]
      report.traffic.deviceToHostCopies = n[10]
      report.traffic.deviceToHostBytes = n[11]
      report.traffic.deviceToDeviceCopies = n[12]
      report.traffic.deviceToDeviceBytes = n[13]
      self = .bye(report)
    case .fail:
      self = .fail(code: Int32(truncatingIfNeeded: try r.int()), message: try r.string())
    case .work:
      let model = try r.int(), step = try r.int(), evaluate = try r.bool(), checkpoint = try r.bool()
      let homes = try r.ints()
      let losses = try (0..<r.count(words: 1)).map { _ in try r.double() }
      let evaluations = try (0..<r.count(words: 3)).map { _ in try r.evaluation() }
      self = .work(
        model: model, step: step, evaluate: evaluate, checkpoint: checkpoint, homes: homes, trainLosses: losses,
        evaluations: evaluations)
    case .workDone:
      let model = try r.int(), has = try r.bool(), e = try r.evaluation()
      self = .workDone(model: model, evaluation: has ? e : nil, seconds: try r.double())
    case .died:
      self = .died(try r.ints())
    case .settle:
      self = .settle(model: try r.int(), release: try r.bool())
    }
    guard r.offset == bytes.count else { throw r.bad("\(bytes.count - r.offset) bytes too many") }
  }

  /// Doubles compare bit for bit (a NaN loss is equal to itself).
  public static func == (a: ControlMessage, b: ControlMessage) -> Bool { a.encoded == b.encoded }

  private struct Writer {
    var bytes: [UInt8] = []
    mutating func op(_ op: Op) { bytes.append(op.rawValue) }
    mutating func word(_ x: UInt64) { withUnsafeBytes(of: x.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func int(_ x: Int) { word(UInt64(bitPattern: Int64(x))) }
    mutating func bool(_ x: Bool) { int(x ? 1 : 0) }
    mutating func double(_ x: Double) { word(x.bitPattern) }
    mutating func optionalDouble(_ x: Double?) {
      bool(x != nil)
      double(x ?? 0)
    }
    mutating func ints(_ xs: [Int]) {
      int(xs.count)
      for x in xs { int(x) }
    }
    mutating func string(_ s: String) {
      let utf8 = Array(s.utf8)
      int(utf8.count)
      bytes += utf8
    }
    mutating func task(_ t: ShardTask) {
      for x in [t.model, t.shard, t.direction == .forward ? 0 : 1, t.step] { int(x) }
    }
    mutating func evaluation(_ e: Evaluation) {
      int(e.step)
      double(e.loss)
      double(e.accuracy)
    }
  }

  private struct Reader {
    let bytes: [UInt8]
    let source: Int
    var offset = 0

    func bad(_ what: String) -> RuntimeError {
      RuntimeError("a control message from rank \(source) cannot be read: \(what)")
    }
    mutating func byte() throws -> UInt8 {
      guard offset < bytes.count else { throw bad("it is empty") }
      defer { offset += 1 }
      return bytes[offset]
    }
    mutating func word() throws -> UInt64 {
      guard bytes.count - offset >= 8 else { throw bad("it ends inside a word at byte \(offset)") }
      defer { offset += 8 }
      return UInt64(bitPattern: littleEndianWord(bytes, at: offset))
    }
    mutating func int() throws -> Int { Int(Int64(bitPattern: try word())) }
    mutating func bool() throws -> Bool {
      let x = try int()
      guard x == 0 || x == 1 else { throw bad("\(x) where a flag (0 or 1) belongs") }
      return x == 1
    }
    mutating func double() throws -> Double { Double(bitPattern: try word()) }
    mutating func optionalDouble() throws -> Double? {
      let has = try bool()
      let x = try double()
      return has ? x : nil
    }
    /// A count of items of `words` words each that the rest of the message can hold.
    mutating func count(words: Int) throws -> Int {
      let n = try int()
      guard n >= 0, n <= (bytes.count - offset) / (8 * words) else { throw bad("a count of \(n) beyond its end") }
      return n
    }
    mutating func ints() throws -> [Int] { try (0..<count(words: 1)).map { _ in try int() } }
    mutating func string() throws -> String {
      let n = try int()
      guard n >= 0, n <= bytes.count - offset else { throw bad("a string of \(n) bytes beyond its end") }
      defer { offset += n }
      return String(decoding: bytes[offset..<(offset + n)], as: UTF8.self)
    }
    mutating func task() throws -> ShardTask {
      let model = try int(), shard = try int(), backward = try bool(), step = try int()
      return ShardTask(model: model, shard: shard, direction: backward ? .backward : .forward, step: step)
    }
    mutating func evaluation() throws -> Evaluation {
      Evaluation(step: try int(), loss: try double(), accuracy: try double())
    }
  }
}
