import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

extension SafeTensorsFile {
  /// Writes `tensors` (all F32, laid out contiguously in the given order) and `metadata` to `path`,
  /// atomically: the bytes go to a temporary file in the same folder, which is fsynced and renamed
  /// over `path`. On any failure the temporary file is removed and an existing file at `path` is left
  /// untouched. The header is padded with spaces so that the data buffer starts 8-byte aligned.
  ///
  /// Throws `InputError` for tensors that cannot be written (values that disagree with the shape,
  /// duplicate or reserved names, negative dims) and `WriteError` for I/O failures (a full disk);
  /// each message names `path`.
  public static func write(
    _ tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)],
    metadata: [String: String], to path: String
  ) throws {
    let header = try headerBytes(tensors.map { ($0.name, $0.shape, $0.values.count) }, metadata: metadata, path: path)

    let dir = (path as NSString).deletingLastPathComponent
    let base = (path as NSString).lastPathComponent
    let tmp = (dir.isEmpty ? "" : dir + "/") + ".\(base).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
      throw WriteError(file: path, "cannot create temporary file \(tmp): \(String(cString: strerror(errno)))")
    }
    var closed = false
    do {
      var length = UInt64(header.count).littleEndian
      try withUnsafeBytes(of: &length) { try writeFully(fd: fd, $0, tmp: tmp, path: path) }
      try header.withUnsafeBytes { try writeFully(fd: fd, $0, tmp: tmp, path: path) }
      for t in tensors {
        #if _endian(big)
          let le = t.values.map { $0.bitPattern.littleEndian }
          try le.withUnsafeBytes { try writeFully(fd: fd, $0, tmp: tmp, path: path) }
        #else
          try writeFully(fd: fd, UnsafeRawBufferPointer(t.values), tmp: tmp, path: path)
        #endif
      }
      guard fsync(fd) == 0 else {
        throw WriteError(file: path, "fsync of \(tmp) failed: \(String(cString: strerror(errno)))")
      }
      closed = true
      guard close(fd) == 0 else {
        throw WriteError(file: path, "close of \(tmp) failed: \(String(cString: strerror(errno)))")
      }
      guard rename(tmp, path) == 0 else {
        throw WriteError(file: path, "cannot rename \(tmp) over it: \(String(cString: strerror(errno)))")
      }
    } catch {
      if !closed { close(fd) }
      unlink(tmp)
      throw error
    }
    // Make the rename itself durable; best effort (some file systems refuse fsync on folders).
    let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_CLOEXEC)
    if dfd >= 0 {
      _ = fsync(dfd)
      close(dfd)
    }
  }

}

/// Writes a safetensors file tensor by tensor, so that a model too large to hold twice in memory
/// is written one shard at a time: the header (every name and shape) first, then each tensor's
/// values in the header's order. Every byte written also goes to `observe` (a checksum). `finish`
/// fsyncs and closes; a writer dropped before `finish` removes its file.
public final class SafeTensorsWriter {
  public let path: String
  /// Written past the page cache where the file system allows (`DirectFile`).
  private var file: DirectFile?
  private let counts: [Int]
  private var next = 0
  private let observe: (UnsafeRawBufferPointer) -> Void

  /// Creates `path` (which must not exist) and writes the header. Throws `InputError` naming
  /// `path` for bad tensors, `WriteError` for I/O failures.
  public init(
    path: String, tensors: [(name: String, shape: [Int])], metadata: [String: String],
    observe: @escaping (UnsafeRawBufferPointer) -> Void = { _ in }
  ) throws {
    var counts: [Int] = []
    for t in tensors {
      var n = 1
      for d in t.shape {
        let (p, overflow) = n.multipliedReportingOverflow(by: max(d, 0))
        n = overflow ? .max : p
      }
      counts.append(n)
    }
    let header = try SafeTensorsFile.headerBytes(
      zip(tensors, counts).map { ($0.name, $0.shape, $1) }, metadata: metadata, path: path)
    self.path = path
    self.counts = counts
    self.observe = observe
    file = try DirectFile(path: path)
    var length = UInt64(header.count).littleEndian
    try withUnsafeBytes(of: &length) { try put($0) }
    try header.withUnsafeBytes { try put($0) }
  }

  deinit {
    if file != nil { unlink(path) }
  }

  /// The next tensor's values (as many as its shape holds).
  public func append(_ values: UnsafeBufferPointer<Float>) throws {
    guard next < counts.count, values.count == counts[next] else {
      throw InputError(
        file: path, "tensor \(next) written with \(values.count) values out of order or of the wrong size")
    }
    next += 1
    #if _endian(big)
      let le = values.map { $0.bitPattern.littleEndian }
      try le.withUnsafeBytes { try put($0) }
    #else
      try put(UnsafeRawBufferPointer(values))
    #endif
  }

  /// Every tensor written: flushes the file to disk and closes it.
  public func finish() throws {
    guard next == counts.count else {
      throw WriteError(file: path, "only \(next) of \(counts.count) tensors were written")
    }
    guard let file else { throw WriteError(file: path, "finished twice") }
    try file.finish()
    self.file = nil
  }

  private func put(_ buf: UnsafeRawBufferPointer) throws {
    guard let file else { throw WriteError(file: path, "written after it was finished") }
    guard buf.count >= SafeTensorsWriter.beside else {
      try file.put(buf)
      return observe(buf)
    }
    // The checksum on a second core while this one stages and writes: both only read `buf`. One
    // after the other they were the exposed end of a sweep (a GPT-2-small model's 1.5 GB: SHA-256
    // at about 1.4 GB/s, then the disk at about 1.3 GB/s).
    var failure: Error?
    DispatchQueue.concurrentPerform(iterations: 2) { i in
      if i == 0 {
        observe(buf)
      } else {
        do { try file.put(buf) } catch { failure = error }
      }
    }
    if let failure { throw failure }
  }

  /// Tensors this large are checksummed beside their write, on another thread.
  static let beside = 1 << 20
}

extension SafeTensorsFile {
  /// The JSON header, padded with spaces to make 8 + its length a multiple of 8. Checks the tensors.
  static func headerBytes(
    _ tensors: [(name: String, shape: [Int], count: Int)], metadata: [String: String], path: String
  )
    throws -> [UInt8]
  {
    var json = "{"
    if !metadata.isEmpty {
      json += "\"__metadata__\":{"
      json += metadata.sorted { $0.key < $1.key }.map { "\(jsonString($0.key)):\(jsonString($0.value))" }.joined(
        separator: ",")
      json += "}"
    }
    var seen = Set<String>()
    var offset = 0
    for t in tensors {
      func fail(_ message: String) -> InputError {
        InputError(file: path, "cannot write tensor \"\(t.name)\": \(message)")
      }
      guard t.name != "__metadata__" else { throw fail("the name is reserved for metadata") }
      guard seen.insert(t.name).inserted else { throw fail("duplicate name") }
      var count = 1
      for d in t.shape {
        guard d >= 0 else { throw fail("shape \(t.shape) has a negative dimension") }
        let (p, overflow) = count.multipliedReportingOverflow(by: d)
        guard !overflow else { throw fail("shape \(t.shape) overflows") }
        count = p
      }
      guard count == t.count else {
        throw fail("shape \(t.shape) needs \(count) values, the buffer holds \(t.count)")
      }
      let end = offset + 4 * count
      if json.count > 1 { json += "," }
      let shape = t.shape.map(String.init).joined(separator: ",")
      json += "\(jsonString(t.name)):{\"dtype\":\"F32\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(end)]}"
      offset = end
    }
    json += "}"
    var bytes = Array(json.utf8)
    while (8 + bytes.count) % 8 != 0 { bytes.append(UInt8(ascii: " ")) }
    return bytes
  }

  private static func writeFully(fd: Int32, _ buf: UnsafeRawBufferPointer, tmp: String, path: String) throws {
    if let error = writeAll(fd, buf) {
      throw WriteError(file: path, "write to \(tmp) failed: \(String(cString: strerror(error)))")
    }
  }
}

/// Writes all of `buf` to `fd` (retrying short writes and EINTR); the errno of a failure, or nil.
private func writeAll(_ fd: Int32, _ buf: UnsafeRawBufferPointer) -> Int32? {
  guard let base = buf.baseAddress else { return nil }
  var done = 0
  while done < buf.count {
    let n = posixWrite(fd, base + done, buf.count - done)
    if n < 0 {
      if errno == EINTR { continue }
      return errno
    }
    done += n
  }
  return nil
}

/// The C `write`, out of reach of `SafeTensorsFile.write`'s name inside the extension.
private func posixWrite(_ fd: Int32, _ buf: UnsafeRawPointer, _ count: Int) -> Int {
  write(fd, buf, count)
}

/// `s` as a JSON string literal (safetensors headers, `trace.json`).
public func jsonString(_ s: String) -> String {
  var out = "\""
  for u in s.unicodeScalars {
    switch u {
    case "\"": out += "\\\""
    case "\\": out += "\\\\"
    case "\n": out += "\\n"
    case "\r": out += "\\r"
    case "\t": out += "\\t"
    case _ where u.value < 0x20:
      let hex = String(u.value, radix: 16)
      out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
    default: out.unicodeScalars.append(u)
    }
  }
  return out + "\""
}
