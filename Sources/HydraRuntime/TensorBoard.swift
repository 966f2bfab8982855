import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// CRC-32C (Castagnoli: the reflected polynomial 0x82F63B78, initial value and final xor all ones),
/// the checksum of TFRecord framing. Byte at a time through one 256-entry table: a record is about
/// 60 bytes, so a faster variant would not show.
enum CRC32C {
  static let table: [UInt32] = (0..<256).map { n -> UInt32 in
    var c = UInt32(n)
    for _ in 0..<8 { c = c & 1 == 1 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
    return c
  }

  static func checksum<Bytes: Sequence>(_ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
    var crc: UInt32 = 0xFFFF_FFFF
    for b in bytes { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
    return ~crc
  }

  /// The stored form: rotated right by 15 bits plus a constant, so that the CRC of data that
  /// itself holds CRCs is not degenerate.
  static func masked(_ crc: UInt32) -> UInt32 { ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8 }
}

/// TFRecord framing, the container of TensorBoard event files. Each record is
///
///     length: UInt64 LE | masked CRC-32C of those 8 bytes: UInt32 LE | data | masked CRC-32C of data: UInt32 LE
enum TFRecord {
  static func append(_ data: [UInt8], to out: inout [UInt8]) {
    let length = withUnsafeBytes(of: UInt64(data.count).littleEndian, Array.init)
    out += length
    withUnsafeBytes(of: CRC32C.masked(CRC32C.checksum(length)).littleEndian) { out += $0 }
    out += data
    withUnsafeBytes(of: CRC32C.masked(CRC32C.checksum(data)).littleEndian) { out += $0 }
  }
}

/// One model's TensorBoard event file of this run: `<folder>/events.out.tfevents.<seconds>.<host>`.
///
/// It starts with the file version and a `SessionLog.START` at `firstStep`: TensorBoard reads a
/// run's files in name order (the seconds in the name keep them in time order) and a START drops
/// whatever earlier files recorded at that step or later. A resumed run thus replaces the steps it
/// trains again, as `OutputFolder.keepMetrics(upTo:)` does for metrics.csv, without rewriting the
/// files of the run before it. (TensorBoard's Rust loader, `--load_fast`, ignores START but drops a
/// series' points at or after any step written again, which comes to the same as soon as the
/// resumed run has recorded a row of each series.)
///
/// Each call writes its records with one `write`, unbuffered like metrics.csv, so that a
/// TensorBoard watching the folder sees every row as it is recorded and a killed run loses none.
final class EventFile {
  let path: String
  private var fd: Int32

  /// Creates the file in `folder` (and the folder), named for `wallTime` or, where a file of this
  /// or a later second is there already (a resume within the same second), one second past it.
  init(folder: String, firstStep: Int, wallTime: Double = Date().timeIntervalSince1970) throws {
    do {
      try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    } catch {
      throw WriteError(file: folder, "cannot create the folder: \(error.localizedDescription)")
    }
    let prefix = "events.out.tfevents."
    let earlier = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).compactMap { name in
      name.hasPrefix(prefix) ? Int(name.dropFirst(prefix.count).prefix { $0 != "." }) : nil
    }
    let seconds = max(Int(wallTime), (earlier.max() ?? -1) + 1)
    path = "\(folder)/\(prefix)\(seconds).\(EventFile.host)"
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw WriteError(file: path, "cannot create: \(String(cString: strerror(errno)))") }
    var version = TBEvent()
    version.wallTime = wallTime
    version.fileVersion = "brain.Event:2"
    var start = TBEvent()
    start.wallTime = wallTime
    start.step = Int64(firstStep)
    start.sessionLog.status = .start
    try append([version, start])
  }

  deinit { if fd >= 0 { close(fd) } }

  /// Scalars of one step, one event (`values` as tag and value; TensorBoard stores them as float).
  func add(step: Int, _ values: [(tag: String, value: Float)], wallTime: Double = Date().timeIntervalSince1970)
    throws
  {
    guard !values.isEmpty else { return }
    var event = TBEvent()
    event.wallTime = wallTime
    event.step = Int64(step)
    event.summary.value = values.map { v in
      var value = TBSummary.Value()
      value.tag = v.tag
      value.simpleValue = v.value
      return value
    }
    try append([event])
  }

  /// Closes the file; a later `add` is a `WriteError`.
  func finish() throws {
    guard fd >= 0 else { return }
    let result = close(fd)
    fd = -1
    guard result == 0 else { throw WriteError(file: path, "close failed: \(String(cString: strerror(errno)))") }
  }

  private func append(_ events: [TBEvent]) throws {
    var out: [UInt8] = []
    do {
      for e in events { TFRecord.append(try e.serializedBytes(), to: &out) }
    } catch {
      throw WriteError(file: path, "cannot encode an event: \(error)")
    }
    guard fd >= 0 else { throw WriteError(file: path, "written to after it was closed") }
    var done = 0
    while done < out.count {
      let n = out.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
      if n < 0 && errno == EINTR { continue }
      guard n > 0 else { throw WriteError(file: path, "write failed: \(String(cString: strerror(errno)))") }
      done += n
    }
  }

  /// This machine's name, as TensorFlow's writers put it in the file name.
  static let host: String = {
    var name = [CChar](repeating: 0, count: 256)
    guard gethostname(&name, name.count - 1) == 0 else { return "localhost" }
    let text = String(cString: name)
    // A name with a path separator would make a folder of the file.
    return text.isEmpty ? "localhost" : text.replacingOccurrences(of: "/", with: "_")
  }()
}
