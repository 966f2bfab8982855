import CZlib
import Foundation

/// Reading data files: memory-mapped for the big token streams, inflated through zlib for `.gz`.
/// Every failure is an `InputError` naming the file.
enum DataFile {
  /// The file's bytes, memory-mapped (the pages are read on demand, never copied whole).
  static func mapped(_ path: String) throws -> Data {
    try checkRegularFile(path)
    do {
      return try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
    } catch {
      throw InputError(file: path, "cannot be read (\(reason(error)))")
    }
  }

  /// The file's bytes, decompressed when the file is gzip: its name ends in `.gz` or it starts with
  /// the gzip magic bytes 1f 8b. A `.gz` name without the magic, a truncated stream or a bad
  /// checksum is an error.
  static func bytesMaybeGzip(_ path: String) throws -> [UInt8] {
    let raw = try mapped(path)
    let magic = raw.count >= 2 && raw[raw.startIndex] == 0x1F && raw[raw.startIndex + 1] == 0x8B
    if !magic {
      if path.lowercased().hasSuffix(".gz") {
        if raw.isEmpty { throw InputError(file: path, "is empty") }
        throw InputError(file: path, "is not gzip data (the name ends in .gz but the gzip magic bytes are missing)")
      }
      return [UInt8](raw)
    }
    return try gunzip(path)
  }

  /// Inflates a gzip file with zlib's gz* functions (concatenated members are read one after another).
  private static func gunzip(_ path: String) throws -> [UInt8] {
    guard let file = gzopen(path, "rb") else {
      throw InputError(file: path, "cannot be opened by zlib")
    }
    defer { gzclose(file) }
    var out: [UInt8] = []
    let chunk = 1 << 16
    var buffer = [UInt8](repeating: 0, count: chunk)
    while true {
      let n = buffer.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32(chunk)) }
      // A truncated stream is not an n < 0 but an end of file with Z_BUF_ERROR left in gzerror.
      var code: Int32 = Z_OK
      var message = gzerror(file, &code).map { String(cString: $0) } ?? "unknown error"
      if message.hasPrefix(path + ": ") { message.removeFirst(path.count + 2) }  // zlib names the file
      if n < 0 || (code != Z_OK && code != Z_STREAM_END) {
        throw InputError(file: path, "corrupt gzip data (\(message))")
      }
      if n == 0 { break }
      out.append(contentsOf: buffer[0..<Int(n)])
    }
    return out
  }

  private static func checkRegularFile(_ path: String) throws {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
      throw InputError(file: path, "no such file")
    }
    if isDirectory.boolValue { throw InputError(file: path, "is a directory, not a data file") }
  }

  private static func reason(_ error: Error) -> String {
    if let cocoa = error as? CocoaError, let underlying = cocoa.userInfo[NSUnderlyingErrorKey] as? NSError,
      underlying.domain == NSPOSIXErrorDomain, let text = strerror(Int32(underlying.code))
    {
      return String(cString: text)
    }
    return error.localizedDescription
  }
}
